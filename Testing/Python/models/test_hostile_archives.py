"""Issue 25 §3, §4 and §6: hostile archives, model files that are FIFOs, a model cache that is not a
folder, ``models pack`` onto a device. Each test builds its bad input and expects one line, quickly.

- A zip or tar.gz bomb (a few hundred KB that unpack to 120 MiB), a zip of 1001 members and an
  archive over the registry's declared ``unpacked_size`` are refused before anything is written.
- Encrypted, oddly compressed and empty zips are one line (they were tracebacks).
- A FIFO as ``completion.json``, ``installed.json`` or ``model_card.json`` is refused, never waited on.
- ``SKULLVAE_HOME`` that is a file, ``/dev/null`` or unwritable is one line.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import finishes

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.models import install_model
from SkullVAELib.models.archive import pack_bundle, unpack_archive

BOMB_BYTES = 120 * 2**20


# fixture tiny_model: Testing/Python/conftest.py


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKULLVAE_REGISTRY", raising=False)
    return tmp_path / "home"


def _cli_one_line(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


def _written(home: Path) -> int:
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file()) if home.exists() else 0


# --- §4: unpacked size and member count, before writing --------------------------------------------
def _zip_bomb(path: Path, tiny_model: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for part in tiny_model.iterdir():
            zf.write(part, f"tiny/{part.name}")
        with zf.open("tiny/padding.bin", "w") as stream:
            for _ in range(BOMB_BYTES // 2**20):
                stream.write(bytes(2**20))
    return path


def _tar_bomb(path: Path, tiny_model: Path) -> Path:
    class Zeros(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    with tarfile.open(path, "w:gz") as tf:
        for part in tiny_model.iterdir():
            tf.add(part, f"tiny/{part.name}")
        info = tarfile.TarInfo("tiny/padding.bin")
        info.size = BOMB_BYTES
        tf.addfile(info, io.BufferedReader(Zeros()))
    return path


@pytest.mark.parametrize("make", [_zip_bomb, _tar_bomb], ids=["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_before_writing(home, tiny_model, tmp_path, capsys, make):
    archive = make(tmp_path / ("bomb.zip" if make is _zip_bomb else "bomb.tar.gz"), tiny_model)
    assert archive.stat().st_size < 2 * 2**20
    line = _cli_one_line(capsys, "models", "install", archive, "--name", "bomb", "--progress", "none")
    assert "unpacks to over" in line and "bomb" in line
    assert _written(home) < 2**20  # refused from the headers: nothing unpacked


def test_a_tar_header_bomb_is_refused_without_reading_it_into_memory(home, tiny_model, tmp_path, capsys):
    # A valid pax header holding a 48 MiB comment, gzipped to ~1 MB: tarfile reads a pax header whole,
    # so recognising and listing this tar allocated 48 MiB (a 3 MB archive: 3 GB) before any size check.
    import tracemalloc

    archive = tmp_path / "header-bomb.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=1) as tf:
        for n, part in enumerate(sorted(tiny_model.iterdir())):
            info = tf.gettarinfo(part, f"tiny/{part.name}")
            if n == 0:
                info.pax_headers = {"comment": "x" * (48 * 2**20)}
            with open(part, "rb") as stream:
                tf.addfile(info, stream)
    assert archive.stat().st_size < 2 * 2**20
    tracemalloc.start()
    try:
        line = _cli_one_line(capsys, "models", "install", archive, "--name", "bomb", "--progress", "none")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "tar header declares over 1 MiB" in line and archive.name in line, line
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated"
    assert not (home / "models" / "bomb").exists()


def test_too_many_members_are_refused(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for k in range(1001):
            zf.writestr(f"tiny/{k}.txt", "x")
    with pytest.raises(SkullVAEError, match="over 1000 members"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_registrys_declared_unpacked_size_caps_the_install(home, tiny_model, tmp_path, monkeypatch):
    import hashlib
    import json

    archive = pack_bundle(tiny_model, tmp_path / "tiny.zip", top="tiny")
    entry = {"name": "tiny", "version": "1", "released": True, "url": "file://" + str(archive),
             "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "size": archive.stat().st_size,
             "unpacked_size": 1000}  # fmt: skip
    registry = tmp_path / "models.json"
    registry.write_text(json.dumps({"format": "skullvae-model-registry", "models": [entry]}))
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(registry))
    from SkullVAELib.models import download_model

    with pytest.raises(SkullVAEError, match="unpacks to over"):
        download_model("tiny")
    assert not (home / "models" / "tiny").exists()


# --- §6: encrypted, oddly compressed and empty zips -----------------------------------------------------
def _patched_zip(path: Path, tiny_model: Path, flag: int = 0, method: int | None = None) -> Path:
    """A zip of the bundle whose headers (local and central) claim encryption or another method."""
    pack_bundle(tiny_model, path, top="tiny")
    data = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature)
        while at >= 0:
            struct.pack_into("<H", data, at + flag_at, struct.unpack_from("<H", data, at + flag_at)[0] | flag)
            if method is not None:
                struct.pack_into("<H", data, at + method_at, method)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("kind", "expected"), [("encrypted", "password"), ("deflate64", "compression method 9"), ("empty", "empty")]
)
def test_unusual_zips_are_one_line(home, tiny_model, tmp_path, capsys, kind, expected):
    path = tmp_path / f"{kind}.zip"
    if kind == "encrypted":
        _patched_zip(path, tiny_model, flag=0x1)
    elif kind == "deflate64":
        _patched_zip(path, tiny_model, method=9)
    else:
        zipfile.ZipFile(path, "w").close()
    line = _cli_one_line(capsys, "models", "install", path, "--progress", "none")
    assert expected in line and path.name in line, line


# --- §4: FIFOs where a model part is read -----------------------------------------------------------------
def test_a_fifo_as_completion_json_is_refused_not_waited_on(tiny_model, tmp_path):
    from SkullVAELib.bundle.model_bundle import ModelBundle

    model = tmp_path / "model"
    model.mkdir()
    for part in tiny_model.iterdir():
        if part.name != "completion.json":
            (model / part.name).write_bytes(part.read_bytes())
    os.mkfifo(model / "completion.json")
    with pytest.raises(SkullVAEError, match="not a regular file"):
        finishes(lambda: ModelBundle.load(model))


@pytest.mark.parametrize("fifo", ["installed.json", "model_card.json"])
def test_a_fifo_in_an_installed_model_is_refused_by_list_and_info(home, tiny_model, capsys, fifo):
    install_model(tiny_model, name="tiny")
    target = home / "models" / "tiny" / fifo
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    for argv in (["models", "info", "tiny"], ["models", "list"]):
        code = finishes(lambda argv=argv: main(argv))
        err = capsys.readouterr().err.strip().splitlines()
        if fifo == "installed.json" or argv[1] == "info":
            assert code == 2 and len(err) == 1 and "not a regular file" in err[0] and fifo in err[0], err


# --- §6: a model cache that is not a writable folder ------------------------------------------------------
def _unwritable(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "home"
    if not Path("/sys").is_dir():
        pytest.skip("no unwritable folder for root here")
    return Path("/sys/skullvae-test-home")  # sysfs: root cannot make folders there


@pytest.mark.parametrize("kind", ["file", "devnull", "unwritable"])
def test_skullvae_home_that_is_not_a_writable_folder_is_one_line(tiny_model, tmp_path, monkeypatch, capsys, kind):
    if kind == "file":
        target = tmp_path / "a-file"
        target.write_text("not a folder")
    else:
        target = Path(os.devnull) if kind == "devnull" else _unwritable(tmp_path)
    monkeypatch.setenv("SKULLVAE_HOME", str(target))
    line = _cli_one_line(capsys, "models", "install", tiny_model, "--name", "tiny", "--progress", "none")
    assert "SKULLVAE_HOME" in line, line
    if kind == "devnull":
        assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


# --- §3: models pack onto a device node ---------------------------------------------------------------
def test_models_pack_refuses_to_replace_a_device_node(tiny_model, tmp_path, capsys):
    node = tmp_path / "null"
    if os.geteuid() == 0:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    else:
        os.mkfifo(node)
    mode = os.lstat(node).st_mode
    line = _cli_one_line(capsys, "models", "pack", tiny_model, "--out", node)
    assert "device, FIFO or socket" in line and str(node) in line
    assert os.lstat(node).st_mode == mode  # still the node, not a zip
