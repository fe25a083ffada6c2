"""Pretrained-model distribution against a real HTTP server on 127.0.0.1 (http.server in a thread).

The server serves a small real bundle archive (the `test` preset, 32³) with HTTP Range
support; tests cover a full download, an interrupted then resumed download, a wrong
checksum, a 404, a server that is gone, corrupt and hostile archives, and the CLI verbs.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.models import download_model, install_model, installed_models, model_path, remove_model
from SkullVAELib.models.archive import pack_bundle
from SkullVAELib.models.card import CARD_TEXT, read_model_card, render_model_card, write_training_card
from SkullVAELib.models.registry import default_registry_path, load_registry
from SkullVAELib.models.store import resolve_model


# --- a small real bundle and a real server ------------------------------------------------
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import network_preset

    bundle = new_bundle(network_preset("test"), aggregated=True, seed=0, info={"train_case_ids": ["000", "001"]})
    d = bundle.network.latent_size
    bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1)})
    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    bundle.save(folder)
    write_training_card(folder, ["/data/skullfix"])
    return folder


@pytest.fixture(scope="module")
def archive_bytes(bundle_dir, tmp_path_factory) -> bytes:
    return pack_bundle(bundle_dir, tmp_path_factory.mktemp("pack") / "tiny-v1.zip", top="tiny").read_bytes()


class Server:
    """A ThreadingHTTPServer serving ``files`` (path -> bytes) with Range requests (also used by test_slicer_models).

    ``cut_once[path] = n`` sends the full headers but only n bytes of the body on the next
    request for ``path`` and then drops the connection (an interrupted download).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.chunk, self.chunk_delay = 1 << 16, 0.0  # a slow server: small chunks with a delay
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                rng = self.headers.get("Range")
                if data is None:
                    server.requests.append((self.path, rng, 404))
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        server.requests.append((self.path, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                server.requests.append((self.path, rng, 206 if start else 200))
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_once.pop(self.path, None)
                body = body if cut is None else body[:cut]
                for i in range(0, len(body), server.chunk):
                    self.wfile.write(body[i : i + server.chunk])
                    if server.chunk_delay:
                        time.sleep(server.chunk_delay)
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def write_registry(path: Path, url: str, data: bytes, sha256: str | None = None, released: bool = True) -> Path:
    doc = {
        "format": "skullvae-model-registry",
        "format_version": 1,
        "models": [
            {
                "name": "tiny",
                "version": "1",
                "released": released,
                "url": url,
                "sha256": sha256 or hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "kind": "aggregated",
                "grid": [32, 32, 32],
            }
        ],
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def env(tmp_path, monkeypatch, server, archive_bytes):
    """SKULLVAE_HOME and SKULLVAE_REGISTRY in tmp_path; the archive served at /tiny-v1.zip."""
    home = tmp_path / "home"
    monkeypatch.setenv("SKULLVAE_HOME", str(home))
    server.files["/tiny-v1.zip"] = archive_bytes
    registry = write_registry(tmp_path / "models.json", server.url + "/tiny-v1.zip", archive_bytes)
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(registry))
    return home


def nothing_left(home: Path) -> bool:
    """No installed model, no partial download, no staging folder."""
    leftovers = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    return not leftovers


# --- downloads -----------------------------------------------------------------------------
def test_full_download_installs_a_loadable_bundle(env, server):
    from SkullVAELib.bundle.model_bundle import ModelBundle

    path = download_model("tiny")
    assert path == env / "models" / "tiny" == model_path("tiny") == resolve_model("tiny")
    assert ModelBundle.load(path).kind == "aggregated"
    assert json.loads((path / "installed.json").read_text())["version"] == "1"
    assert not list((env / "downloads").iterdir())  # the archive is removed once installed
    assert [m.name for m in installed_models()] == ["tiny"]
    assert len(server.requests) == 1
    download_model("tiny")  # already installed with this sha256: no second request
    assert len(server.requests) == 1


def test_download_never_replaces_the_users_own_model_of_that_name(env, server, bundle_dir):
    """A model installed from a folder under a registry name is the user's: download refuses it."""
    own = install_model(bundle_dir, name="tiny")
    with pytest.raises(SkullVAEError, match="not from the registry; use --overwrite"):
        download_model("tiny")
    assert json.loads((own / "installed.json").read_text())["source"] == str(bundle_dir.resolve())
    assert not server.requests  # refused before downloading anything
    path = download_model("tiny", overwrite=True)
    assert json.loads((path / "installed.json").read_text())["registry_name"] == "tiny"


def test_interrupted_download_resumes_with_a_range_request(env, server, archive_bytes):
    half = len(archive_bytes) // 2
    server.cut_once["/tiny-v1.zip"] = half
    with pytest.raises(SkullVAEError, match="interrupted.*run the same command again to resume"):
        download_model("tiny")
    part = env / "downloads" / "tiny-v1.zip.part"
    assert part.stat().st_size == half
    assert not (env / "models" / "tiny").exists()
    seen = []
    path = download_model("tiny", progress=lambda stage, fraction, message="": seen.append((stage, fraction)))
    assert server.requests[-1] == ("/tiny-v1.zip", f"bytes={half}-", 206)
    assert (path / "config.json").is_file() and not part.exists()
    fractions = [f for s, f in seen if s == "download"]
    assert fractions[0] > 0.45 and fractions[-1] == 1.0  # progress counts the resumed bytes


def test_checksum_mismatch_is_refused_and_removed(env, server, archive_bytes, tmp_path, monkeypatch):
    bad = write_registry(tmp_path / "bad.json", server.url + "/tiny-v1.zip", archive_bytes, sha256="0" * 64)
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(bad))
    with pytest.raises(SkullVAEError, match="checksum mismatch.*removed"):
        download_model("tiny")
    assert nothing_left(env)


def test_corrupt_archive_with_matching_checksum_is_refused(env, server, tmp_path, monkeypatch):
    junk = b"this is not a zip file" * 100
    server.files["/junk.zip"] = junk
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(write_registry(tmp_path / "j.json", server.url + "/junk.zip", junk)))
    with pytest.raises(SkullVAEError, match="not a .zip or .tar"):
        download_model("tiny")
    assert nothing_left(env)


def test_404_names_the_url_and_the_manual_install(env, server, archive_bytes, tmp_path, monkeypatch):
    url = server.url + "/missing.zip"
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(write_registry(tmp_path / "m.json", url, archive_bytes)))
    with pytest.raises(SkullVAEError) as info:
        download_model("tiny")
    message = str(info.value)
    assert url in message and "404" in message and "skullvae models install FILE" in message
    assert "\n" not in message
    assert nothing_left(env)


def test_server_gone_gives_one_line(env, server, capsys):
    server.stop()
    assert main(["models", "download", "tiny", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and server.url + "/tiny-v1.zip" in err and "skullvae models install" in err
    assert nothing_left(env)


def test_unreleased_entry_says_so(env, server, archive_bytes, tmp_path, monkeypatch, capsys):
    reg = write_registry(tmp_path / "u.json", server.url + "/tiny-v1.zip", archive_bytes, released=False)
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(reg))
    with pytest.raises(SkullVAEError, match="not released yet"):
        download_model("tiny")
    assert not server.requests
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "not released yet" in out and "No release of the pretrained models exists yet" in out


# --- installing by hand --------------------------------------------------------------------
def test_install_file_matches_registry_name_and_remove(env, archive_bytes, tmp_path, bundle_dir):
    archive = tmp_path / "downloaded-by-browser.zip"
    archive.write_bytes(archive_bytes)
    path = install_model(archive)
    assert path.name == "tiny"  # the registry entry with this sha256
    with pytest.raises(SkullVAEError, match="already installed"):
        install_model(bundle_dir)
    install_model(bundle_dir, name="tiny-folder")
    assert {m.name for m in installed_models()} == {"tiny", "tiny-folder"}
    assert remove_model("tiny") == path and not path.exists()
    with pytest.raises(SkullVAEError, match="not installed"):
        model_path("tiny")


def test_install_url_from_the_server(env, server):
    assert install_model(server.url + "/tiny-v1.zip").name == "tiny"


def test_path_traversal_archive_is_refused(env, tmp_path, bundle_dir):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("tiny/config.json", (bundle_dir / "config.json").read_text())
        zf.writestr("../outside.txt", "gotcha")
    with pytest.raises(SkullVAEError, match="unsafe path"):
        install_model(evil)
    assert not (tmp_path / "outside.txt").exists() and not (env / "outside.txt").exists()
    assert not installed_models()


def test_broken_bundle_in_archive_is_refused(env, tmp_path, bundle_dir):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        for f in bundle_dir.iterdir():
            if f.is_file():
                data = f.read_bytes()
                zf.writestr(f"tiny/{f.name}", data[: len(data) // 2] if f.name == "encoder.safetensors" else data)
    with pytest.raises(SkullVAEError, match="not a valid model bundle"):
        install_model(broken)
    assert not installed_models() and not [p for p in (env / "models").iterdir()]


# --- CLI, resolver and model card ----------------------------------------------------------
def test_cli_verbs(env, capsys, bundle_dir):
    assert main(["models", "install", str(bundle_dir), "--name", "mine", "--progress", "none"]) == 0
    assert main(["models", "path", "mine"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(Path("models") / "mine"))
    assert main(["models", "info", "mine"]) == 0
    card = capsys.readouterr().out
    assert "CC BY-NC-SA 4.0" in card and "Not a medical device" in card and "000-001" in card
    assert main(["models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert listed["mine"]["installed"] and not listed["tiny"]["installed"]
    assert main(["models", "remove", "mine"]) == 0
    assert main(["models", "path", "mine"]) == 2


def test_cli_install_replaces_an_installed_name_only_with_overwrite(env, capsys, bundle_dir, archive_bytes, tmp_path):
    archive = tmp_path / "tiny-v1.zip"
    archive.write_bytes(archive_bytes)
    assert main(["models", "install", str(bundle_dir), "--name", "mine", "--progress", "none"]) == 0
    installed = env / "models" / "mine" / "installed.json"
    before = installed.read_text()
    capsys.readouterr()
    # An installed model is not replaced without --overwrite: one line naming --overwrite, exit 2.
    assert main(["models", "install", str(archive), "--name", "mine", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already installed" in err[0] and "--overwrite" in err[0] and "--force" not in err[0]
    assert installed.read_text() == before
    assert main(["models", "install", str(archive), "--name", "mine", "--overwrite", "--progress", "none"]) == 0
    assert "--force" not in capsys.readouterr().err
    meta = json.loads(installed.read_text())
    assert meta["source"] == str(archive.resolve()) and meta["sha256"] == hashlib.sha256(archive_bytes).hexdigest()
    # the library takes the same keyword
    assert install_model(bundle_dir, name="mine", overwrite=True) == env / "models" / "mine"
    assert json.loads(installed.read_text())["source"] == str(bundle_dir.resolve())
    assert [m.name for m in installed_models()] == ["mine"]


def test_cli_download_again_only_with_overwrite_and_force_is_no_option(env, server, capsys, bundle_dir):
    assert main(["models", "download", "tiny", "--progress", "none"]) == 0
    assert main(["models", "download", "tiny", "--progress", "none"]) == 0  # installed with this sha256: kept
    assert len(server.requests) == 1
    assert main(["models", "download", "tiny", "--overwrite", "--progress", "none"]) == 0
    assert len(server.requests) == 2  # --overwrite downloads again
    for argv in (["download", "tiny"], ["install", str(bundle_dir), "--name", "mine"]):
        with pytest.raises(SystemExit) as usage_error:  # the old name of --overwrite is gone
            main(["models", *argv, "--force", "--progress", "none"])
        assert usage_error.value.code == 2 and "--force" in capsys.readouterr().err
    assert len(server.requests) == 2


def test_resolver_prefers_folders_and_explains_unknown_names(env, bundle_dir):
    assert resolve_model(str(bundle_dir)) == bundle_dir
    with pytest.raises(SkullVAEError, match="no model folder 'nosuch'"):
        resolve_model("nosuch")


def test_model_card_records_data_licence_and_disclaimer(bundle_dir):
    card = read_model_card(bundle_dir)
    assert card["training"]["source"] == "skullfix" and "non-commercial" in card["licence"]
    text = (bundle_dir / CARD_TEXT).read_text()
    assert text == render_model_card(card)
    assert "Not a medical device" in text and "Held-out metrics" in text


def test_shipped_registry_is_valid_and_points_at_release_assets():
    registry = load_registry(default_registry_path())  # the file a wheel and Slicer ship (test_python_packaging.py)
    assert registry.entries
    for entry in registry.entries:
        assert entry.url.startswith("https://github.com/skullvae/SlicerSkullVAE/releases/download/")
        assert entry.released == bool(entry.sha256)
        assert entry.licence and entry.training_data and entry.split and entry.grid


def test_zip_of_bundle_is_reproducible(bundle_dir, tmp_path):
    a = pack_bundle(bundle_dir, tmp_path / "a.zip").read_bytes()
    b = pack_bundle(bundle_dir, tmp_path / "b.zip").read_bytes()
    assert a == b
    assert all(n.startswith("tiny/") for n in zipfile.ZipFile(io.BytesIO(a)).namelist())
