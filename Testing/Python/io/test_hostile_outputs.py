"""Hostile destinations through the CLI (issue 10 items 1, 2, 4, 5, 10, 11, 12): outputs that
are inputs, live in the model, have the wrong name, already exist, cannot be written, or are
written by several runs at once. Every refusal is one line, exit 2, and writes nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.cli import main
from SkullVAELib.core.atomic import atomic_path, atomic_write_text, is_temporary_name
from SkullVAELib.core.config import PRESETS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import SkullImage, write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (recursively) and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-out")
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(root / "model")
    defective, _ = cranial_defect(make_phantom(5, shape=SHAPE, spacing=SPACING), seed=2)
    write_mask(defective, root / "defective.nrrd")
    data = root / "data" / "complete_skull"
    for k in range(3):
        write_mask(make_phantom(k, shape=SHAPE, spacing=SPACING), data / f"00{k}.nrrd")
    return root


pytestmark = pytest.mark.usefixtures("default_limits")


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def _refused(capsys, *argv) -> str:
    code, err = _cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


@contextlib.contextmanager
def _read_only_folder(folder: Path):
    """A folder nobody can write into: chmod for ordinary users; a read-only tmpfs for root."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root where no read-only folder can be made (mount refused)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


# --- item 1: outputs that are inputs, one another, or inside the model ------------------------
def _complete(setup, *extra):
    return ["complete", "--model", setup / "model", "--input", setup / "defective.nrrd", "--progress", "none", *extra]


def test_outputs_resolving_to_the_input_or_the_model_are_refused(setup, capsys, tmp_path):
    before_input, before_model = _digest(setup), _digest(setup / "model")
    alias = tmp_path / "alias.seg.nrrd"
    alias.symlink_to(setup / "defective.nrrd")
    stl_alias = tmp_path / "alias.stl"
    stl_alias.symlink_to(setup / "defective.nrrd")
    out = tmp_path / "r.seg.nrrd"
    cases = [
        (["--output", alias], "is an input of this command"),
        (["--output", out, "--implant-stl", stl_alias], "is an input of this command"),
        (["--output", out, "--uncertainty", setup / "defective.nrrd"], "is an input of this command"),
        (["--output", setup / "model" / "config.json"], "must end in .seg.nrrd"),
        (["--output", setup / "model" / "r.seg.nrrd"], "inside the model folder"),
        (["--output", out, "--uncertainty", setup / "model" / "u.nrrd"], "inside the model folder"),
    ]
    for extra, needle in cases:
        assert needle in _refused(capsys, *_complete(setup, *extra)), extra
    link = tmp_path / "same.nrrd"
    link.symlink_to(tmp_path / "r.seg.nrrd")
    assert "name the same file" in _refused(capsys, *_complete(setup, "--output", out, "--uncertainty", link))
    assert _digest(setup) == before_input and _digest(setup / "model") == before_model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias.seg.nrrd", "alias.stl", "same.nrrd"]


# --- item 12: output names say the format ------------------------------------------------------
@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--output", "{t}/out.nii.gz"], "--output must end in .seg.nrrd"),
        (["--output", "{t}/out.txt"], "--output must end in .seg.nrrd"),
        (["--output", "{t}/out"], "--output must end in .seg.nrrd"),
        (["--output", "{t}/r.seg.nrrd", "--implant-stl", "{t}/i.png"], "--implant-stl must end in .stl"),
        (["--output", "{t}/r.seg.nrrd", "--uncertainty", "{t}/u.png"], "--uncertainty must end in .nrrd"),
        (["--output", "{t}/r.seg.nrrd", "--uncertainty", "{t}/u.mhd"], "--uncertainty must end in .nrrd"),
    ],
)
def test_output_names_must_match_their_format(setup, capsys, tmp_path, extra, needle):
    extra = [e.format(t=tmp_path) for e in extra]
    assert needle in _refused(capsys, *_complete(setup, *extra))
    assert list(tmp_path.iterdir()) == []


def test_uncertainty_is_written_in_the_format_its_name_asks(setup, capsys, tmp_path):
    code, err = _cli(
        capsys, *_complete(setup, "--output", tmp_path / "r.seg.nrrd", "--uncertainty", tmp_path / "u.nii.gz"),
        "--samples", "2",
    )  # fmt: skip
    assert code == 0, err
    import gzip

    with gzip.open(tmp_path / "u.nii.gz") as stream:
        assert int.from_bytes(stream.read(4), "little") == 348  # a NIfTI-1 header, not NRRD bytes


# --- item 11: destinations that cannot be written ---------------------------------------------
def test_unwritable_destinations_are_one_line(setup, capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in _refused(
        capsys, *_complete(setup, "--output", tmp_path / "file" / "r.seg.nrrd")
    )
    assert "does not exist" in _refused(capsys, *_complete(setup, "--output", tmp_path / "a" / "b" / "r.seg.nrrd"))
    with _read_only_folder(tmp_path / "ro") as ro:
        assert "not writable" in _refused(capsys, *_complete(setup, "--output", ro / "r.seg.nrrd"))
        message = _refused(
            capsys, "make-defects", "--complete", setup / "data", "--kind", "cranial", "--out", ro / "new"
        )
        assert "ro/new" in message
        message = _refused(
            capsys, "train", "--data", setup / "data", "--out", ro / "m", "--preset", "test", "--epochs", "0",
            "--stage", "1", "--progress", "none", "--cache-dir", tmp_path / "cache",
        )  # fmt: skip
        assert "ro/m" in message
        message = _refused(capsys, "evaluate", "--model", setup / "model", "--data", setup / "data", "--out", ro / "r")
        assert "ro/r" in message and "not writable" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "file", "ro"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["file", "ro"]


def test_disk_full_while_writing_leaves_nothing(setup, tmp_path):
    """The file-size limit of a child process stands in for a full disk: one line, exit 2, nothing left."""
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import resource, signal, sys\n"
        "from SkullVAELib.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = _complete(setup, "--output", out / "r.seg.nrrd", "--implant-stl", out / "i.stl", "--sources", "model")
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0], done.stderr[-3000:]
    assert list(out.iterdir()) == []


# --- items 10, 4: leftovers of a killed run; several runs writing the same outputs ------------
def test_stale_temporaries_are_removed_by_the_next_complete(setup, capsys, tmp_path):
    stale = [tmp_path / ".r.seg.nrrd.k1ll3d00.tmp.seg.nrrd", tmp_path / ".i.stl.k1ll3d00.tmp.stl"]
    for path in stale:
        path.write_bytes(b"half")
    code, err = _cli(
        capsys, *_complete(setup, "--output", tmp_path / "r.seg.nrrd", "--implant-stl", tmp_path / "i.stl")
    )
    assert code == 0, err
    assert not any(is_temporary_name(p.name) for p in tmp_path.iterdir())


WRITER = """
import os, sys, time
import SkullVAELib.io.outputs as outputs
from SkullVAELib.io.outputs import OutputPlan
folder, k, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
real, calls = os.replace, []
def staggered_replace(a, b):  # run k: seg at +0.1k s, stl 0.3(3-k) s later: unlocked, seg of run 3 + stl of run 0
    time.sleep(0.1 * k if not calls else 0.3 * (3 - k))
    calls.append(b)
    real(a, b)
outputs.os.replace = staggered_replace
plan = OutputPlan()
seg, stl = plan.add(folder + "/r.seg.nrrd", "--output"), plan.add(folder + "/i.stl", "--implant-stl")
with plan.transaction() as tx:
    tx.path(seg).write_text(f"run{k}")
    tx.path(stl).write_text(f"run{k}")
    time.sleep(max(0.0, start - time.time()))  # all four commit at the same moment
"""


def test_concurrent_runs_never_mix_their_outputs(tmp_path):
    import time

    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(k), str(start)]) for k in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert (tmp_path / "r.seg.nrrd").read_text() == (tmp_path / "i.stl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.stl", "r.seg.nrrd"]


def test_relative_outputs_keep_their_folder_and_its_other_files(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    for folder in ("old", "new"):
        args = _complete(setup, "--output", f"{folder}/r.seg.nrrd", "--implant-stl", f"{folder}/i.stl")
        code, err = _cli(capsys, *args)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [
        "i.stl",
        "keep.txt",
        "r.seg.nrrd",
        "r.seg.nrrd.run.json",
    ]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["i.stl", "r.seg.nrrd", "r.seg.nrrd.run.json"]


# --- item 2: existing data sets and models are not replaced without --overwrite ---------------
def test_make_defects_refuses_to_replace_existing_cases(setup, capsys, tmp_path):
    out = tmp_path / "facial"
    code, err = _cli(capsys, "make-defects", "--complete", setup / "data", "--kind", "facial", "--out", out,
                     "--progress", "none")  # fmt: skip
    assert code == 0, err
    before = _digest(out)
    message = _refused(capsys, "make-defects", "--complete", setup / "data", "--kind", "facial", "--out", out,
                       "--seed", "5", "--progress", "none")  # fmt: skip
    assert "--overwrite" in message and _digest(out) == before
    code, err = _cli(capsys, "make-defects", "--complete", setup / "data", "--kind", "facial", "--out", out,
                     "--seed", "5", "--overwrite", "--progress", "none")  # fmt: skip
    assert code == 0 and _digest(out) != before


def test_make_defects_with_a_bad_fifth_input_writes_nothing(setup, capsys, tmp_path):
    data = tmp_path / "complete_skull"
    data.mkdir()
    for k in range(3):
        os.symlink(setup / "data" / "complete_skull" / f"00{k}.nrrd", data / f"00{k}.nrrd")
    (data / "009.nrrd").write_bytes((setup / "data" / "complete_skull" / "000.nrrd").read_bytes()[:300])
    message = _refused(capsys, "make-defects", "--complete", tmp_path, "--kind", "cranial", "--out", tmp_path / "out",
                       "--progress", "none")  # fmt: skip
    assert "009.nrrd" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "defective_skull").exists()


def test_train_refuses_to_replace_a_finished_model(setup, capsys, tmp_path):
    model = tmp_path / "m"
    new_bundle(PRESETS["test"], seed=0).save(model)
    before = _digest(model)
    message = _refused(capsys, "train", "--data", setup / "data", "--out", model, "--preset", "test", "--epochs", "1",
                       "--stage", "1", "--progress", "none", "--cache-dir", tmp_path / "cache")  # fmt: skip
    assert "--overwrite" in message and _digest(model) == before


# --- item 5 through the CLI: limits and their flags --------------------------------------------
def test_complete_refuses_a_header_declaring_2000_cubed(setup, capsys, tmp_path):
    import gzip

    huge = tmp_path / "huge.nrrd"
    huge.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2000 2000 2000\nencoding: gzip\n\n")
    with open(huge, "ab") as stream:
        stream.write(gzip.compress(b"\0" * 64))
    args = ["complete", "--model", setup / "model", "--input", huge, "--output", tmp_path / "r.seg.nrrd"]
    assert "exceeds the limit" in _refused(capsys, *args)
    assert "exceeds the limit of 1,000 voxels" in _refused(
        capsys, *_complete(setup, "--output", tmp_path / "r.seg.nrrd", "--max-voxels", "1000")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.nrrd"]


# --- item 10: stale temporaries; item 11: write errors, at the level of one file --------------
def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(SkullVAEError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def _small_skull() -> SkullImage:
    mask = np.zeros((24, 20, 16), dtype=bool)
    mask[4:20, 4:16, 4:12] = True
    return SkullImage(mask, origin=(1.0, 2.0, 3.0), spacing=(1.0, 1.5, 2.0))


def test_temporaries_of_a_killed_writer_are_removed_on_the_next_run(tmp_path):
    final = tmp_path / "implant.stl"
    code = (
        "import os, sys\nfrom SkullVAELib.core.atomic import atomic_path\n"
        f"with atomic_path({str(final)!r}, suffix='.stl') as tmp:\n"
        "    tmp.write_bytes(b'x' * 100000)\n    os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    left = [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]
    assert len(left) == 1 and not final.exists()
    busy = tmp_path / ".implant.stl.abcd1234.tmp.stl"  # a live writer's temporary (locked)
    busy.write_bytes(b"busy")
    import fcntl

    with open(busy, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        atomic_write_text(final, "solid\n")
        names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".implant.stl.abcd1234.tmp.stl", "implant.stl"]


def test_stale_mhd_temporary_folders_are_removed_unless_in_use(tmp_path):
    import fcntl

    stale, busy = tmp_path / ".s.mhd.k1ll3d00.tmpdir", tmp_path / ".s.mhd.l1v3w0rk.tmpdir"
    for folder in (stale, busy):
        folder.mkdir()
        (folder / "s.zraw").write_bytes(b"half")
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_mask(_small_skull(), tmp_path / "s.mhd")
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.mhd.l1v3w0rk.tmpdir", "s.mhd", "s.zraw"]


def test_parent_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file" in _one_line_error(atomic_write_text, tmp_path / "file" / "out.json", "{}")


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES", "EROFS"])
def test_write_errors_become_one_line_and_leave_nothing(tmp_path, errno_name):
    import errno

    code = getattr(errno, errno_name)
    final = tmp_path / "out.bin"
    with pytest.raises(SkullVAEError) as info:
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code))
    assert os.strerror(code) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_a_segmentation_leaves_nothing(tmp_path):
    """A real short write: the file-size limit (RLIMIT_FSIZE) of a child process stands in for a full disk."""
    code = (
        "import resource, signal, sys\nimport numpy as np\n"
        "from SkullVAELib.io.image import SkullImage\nfrom SkullVAELib.io.segfile import Segment, write_segmentation\n"
        "from SkullVAELib.core.errors import SkullVAEError\n"
        "rng = np.random.default_rng(0)\nlike = SkullImage(rng.random((64, 64, 64)) > 0.5, (0, 0, 0), (1, 1, 1))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nresource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        f"    write_segmentation({str(tmp_path / 'r.seg.nrrd')!r}, like, [Segment('Completed skull', like.mask)])\n"
        "except SkullVAEError as exc:\n    print(exc)\n    sys.exit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "r.seg.nrrd: cannot write" in done.stdout and done.stdout.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
