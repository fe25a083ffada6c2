"""Issue 25 §4 and §6: hostile download servers, each on 127.0.0.1 in a thread (never the internet).

A server that streams without end, announces more than allowed, sends one byte at a time,
takes too long, loops its redirects or answers with a login page: each download ends with
one line naming the URL; a refused download leaves no ``.part``, an interrupted one keeps it
for the resume. ``models install http://…/..`` stays inside the model cache.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.models import download
from SkullVAELib.models.download import download_file


class HostileServer:
    """Routes: /endless (no length, zeros forever), /endless-declared (a false small length, then forever),
    /huge-length (announces 10 GB), /trickle (a few bytes per second), /slow (64 KiB every 0.05 s, 50 MiB),
    /loop (302 to itself), /login (a text/html page), /login-untyped (an HTML body, no HTML type),
    /files/* (``files``)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _stream(self, chunk: bytes, delay: float, limit: int | None = None) -> None:
                sent = 0
                try:
                    while limit is None or sent < limit:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if delay:
                            time.sleep(delay)
                except OSError:  # the client gave up: what these tests expect
                    pass

            def do_GET(self):  # noqa: C901 - one branch per hostile behaviour
                path = self.path
                if path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                elif path in ("/login", "/login-untyped"):
                    body = b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html" if path == "/login" else "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif path in server.files:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(server.files[path])))
                    self.end_headers()
                    self.wfile.write(server.files[path])
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/zip")
                    if path == "/endless-declared":
                        self.send_header("Content-Length", "1000")
                    if path == "/huge-length":
                        self.send_header("Content-Length", str(10 * 2**30))
                    if path == "/trickle":
                        self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    if path == "/trickle":
                        self._stream(b"\0", 0.2, limit=1000000)
                    elif path == "/slow":
                        self._stream(b"\0" * 65536, 0.05, limit=50 * 2**20)
                    elif path == "/huge-length":
                        self._stream(b"\0" * 1024, 0.0, limit=4096)
                    else:
                        self._stream(b"\0" * 65536, 0.0)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.stop()


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(SkullVAEError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --- size bounds: the declared size, else a stated maximum; the .part of a refused download goes --------
def test_endless_stream_stops_at_the_declared_size_and_leaves_no_part(hostile, tmp_path):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/endless", dest, size=300_000)
    assert "declared size" in message and hostile.url in message
    assert not _part(dest).exists() and not dest.exists()


def test_a_length_over_the_declared_size_is_refused_before_reading(hostile, tmp_path):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/endless-declared", dest, size=500)  # it announces 1000
    assert "declared size" in message and not _part(dest).exists()


def test_endless_stream_without_a_declared_size_stops_at_the_maximum(hostile, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 2 * 2**20)
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/endless", dest)
    assert "without a declared size" in message and "2,097,152" in message
    assert not _part(dest).exists()


def test_an_announced_length_over_the_limit_is_refused_before_reading(hostile, tmp_path):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/huge-length", dest)
    assert "more than" in message and not _part(dest).exists()


# --- time bounds: a stall timeout and an overall bound; the .part is kept for the resume -----------
def test_a_server_sending_a_few_bytes_a_second_is_a_stall(hostile, tmp_path):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/trickle", dest, stall_s=1.0)
    assert "stalled" in message and "resume" in message
    assert _part(dest).is_file() and _part(dest).stat().st_size < 100  # kept: the next call resumes it


def test_a_download_has_an_overall_time_bound(hostile, tmp_path):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + "/slow", dest, max_seconds=1.0)
    assert "took over 1 s" in message


# --- one clear line for a redirect loop and a login page ---------------------------------------------
def test_a_redirect_loop_is_one_clear_line(hostile, tmp_path):
    message = _refused(download_file, hostile.url + "/loop", tmp_path / "model.zip")
    assert "redirect loop" in message and hostile.url in message


@pytest.mark.parametrize("route", ["/login", "/login-untyped"])
def test_a_login_page_instead_of_the_archive_is_one_clear_line(hostile, tmp_path, route):
    dest = tmp_path / "model.zip"
    message = _refused(download_file, hostile.url + route, dest)
    assert "web page" in message and not _part(dest).exists() and not dest.exists()


def test_models_install_of_a_login_page_is_one_line(hostile, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    assert main(["models", "install", hostile.url + "/login", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "web page" in err[0]


def test_models_install_of_a_url_ending_in_dotdot_stays_in_the_cache(hostile, tmp_path, monkeypatch, capsys):
    """The file name of http://…/.. was "..": the download's destination was the cache folder itself."""
    home = tmp_path / "home"
    monkeypatch.setenv("SKULLVAE_HOME", str(home))
    hostile.files["/a/.."] = b"not an archive"
    code = main(["models", "install", hostile.url + "/a/..", "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a model archive" in err[0], err
    assert home.is_dir() and sorted(p.name for p in home.iterdir()) == ["downloads", "models"]
    assert "downloads/model-archive" in err[0] and list((home / "downloads").iterdir()) == []
