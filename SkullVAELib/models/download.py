"""Download one file over HTTP(S) with resume, progress, cancel, bounds and sha256 verification.

Written on ``urllib`` (standard library) on purpose: the Slicer module runs this before
its Python dependencies are installed, and a resumable download is a few lines of
``Range: bytes=N-`` on top of ``urlopen`` (``requests`` adds nothing we need and is not
always present in Slicer's Python). The bytes go to ``FILE.part``; only a complete file
whose size and sha256 match is renamed to ``FILE``.

Bounds (each a one-line error naming the URL):

- at most the declared ``size`` bytes (the registry's), else :data:`MAX_DOWNLOAD_BYTES`: a server
  that streams without end, or announces more (``Content-Length``), is cut off there;
- a stall timeout: fewer than :data:`STALL_MIN_BYTES` in any :data:`STALL_S` seconds (a server
  sending one byte a second) ends the download; an overall bound of :data:`MAX_SECONDS`;
- a redirect loop, and a web page (``text/html``, e.g. a login page) instead of the file.

An interrupted download (network error, stall, time bound, cancel) keeps the ``.part`` so that
the next call resumes it; a refused one (too large, a web page, wrong size or checksum) removes it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from SkullVAELib import __version__
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0  # connecting, and the longest silence of one read
STALL_S = 60.0
STALL_MIN_BYTES = 16 * 1024  # less than this in STALL_S seconds is a stalled download
MAX_SECONDS = 6 * 3600.0
MAX_DOWNLOAD_BYTES = 4 * 2**30  # without a declared size (an archive URL not in the registry)
PART_SUFFIX = ".part"
_HTML_TYPES = ("text/html", "application/xhtml+xml")


class DownloadCancelled(Exception):
    """The caller's ``cancel()`` returned True; the partial file is kept for a later resume."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def by_hand_hint(url: str) -> str:
    """How to install a file without this downloader (appended to every network error)."""
    return f"download {url} another way (e.g. in a browser) and run: skullvae models install FILE"


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float = TIMEOUT_S,
    stall_s: float = STALL_S,
    max_seconds: float = MAX_SECONDS,
) -> Path:
    """Fetch ``url`` into ``dest``, resuming ``dest.part`` when it exists.

    Args:
        url: http(s) or file URL.
        dest: final path; written only when the file is complete and verified.
        sha256: expected hex digest (verified when given); size: expected bytes (the download
            stops there; without it, at :data:`MAX_DOWNLOAD_BYTES`).
        progress: ``progress("download", fraction, "12.3 of 40.0 MB")``.
        cancel: polled between chunks; True stops with :class:`DownloadCancelled`.
        timeout: seconds to connect and the longest silence of one read.
        stall_s: fewer than :data:`STALL_MIN_BYTES` in this many seconds ends the download.
        max_seconds: the longest a download may take.
    Returns ``dest``. Raises SkullVAEError (one line naming the URL) on network errors, a stall,
    a redirect loop, a web page instead of the file, too many bytes, a wrong size or a wrong
    checksum (the partial file is removed for the refusals, kept for interruptions).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + PART_SUFFIX)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256 and sha256_file(dest) == sha256.lower():
        return dest
    start = part.stat().st_size if part.is_file() else 0
    if size is not None and start > size:
        part.unlink()
        start = 0
    limits = _Limits(size if size is not None else MAX_DOWNLOAD_BYTES, size is not None, stall_s, max_seconds)
    if size is None or start < size:
        try:
            _fetch(url, part, start, limits, progress, cancel, timeout)
        except _Refused as exc:
            part.unlink(missing_ok=True)
            raise SkullVAEError(f"{exc}; the partial file was removed") from None
    _verify(url, part, sha256, size)
    os.replace(part, dest)
    if progress is not None:
        progress("download", 1.0, f"verified {dest.name}")
    return dest


class _Refused(Exception):
    """A download refused for what the server sent (not an interruption): its .part is removed."""


class _Limits:
    def __init__(self, max_bytes: int, declared: bool, stall_s: float, max_seconds: float) -> None:
        self.max_bytes, self.declared, self.stall_s, self.max_seconds = max_bytes, declared, stall_s, max_seconds
        self.t0 = time.monotonic()

    def too_many(self, url: str, done: int) -> _Refused:
        what = "its declared size" if self.declared else "the most SkullVAE downloads without a declared size"
        return _Refused(f"download of {url} refused: the server sends more than {what} ({self.max_bytes:,} bytes)")


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": f"skullvae/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the partial file may be complete
            return None
        if 300 <= exc.code < 400:
            raise _Refused(
                f"download of {url} refused: a redirect loop (or too many redirects, HTTP {exc.code})"
            ) from None
        raise SkullVAEError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {by_hand_hint(url)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SkullVAEError(f"cannot download {url}: {reason}; {by_hand_hint(url)}") from None


def _fetch(url, part: Path, start: int, limits: _Limits, progress, cancel, timeout) -> None:
    response = _open(url, start, timeout)
    if response is None:
        return
    with response:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0  # the server ignored the range: start again from the first byte
        elif start and not _content_range_starts_at(response.headers.get("Content-Range"), start):
            response.close()
            part.unlink(missing_ok=True)
            return _fetch(url, part, 0, limits, progress, cancel, timeout)
        if response.headers.get_content_type() in _HTML_TYPES:
            raise _Refused(_web_page(url))
        length = response.headers.get("Content-Length")
        announced = start + int(length) if length and length.isdigit() else None
        if announced is not None and announced > limits.max_bytes:
            raise limits.too_many(url, announced)
        total = limits.max_bytes if limits.declared else announced
        done = _copy(url, response, part, start, total, limits, progress, cancel)
    if total is not None and done < total:
        raise SkullVAEError(
            f"download of {url} interrupted after {_mb(done, total)}; run the same command again to resume, "
            f"or {by_hand_hint(url)}"
        )


def _copy(url, response, part: Path, start: int, total, limits: _Limits, progress, cancel) -> int:
    """Copy the response into ``part`` (appending after ``start`` bytes) within the limits; bytes done."""
    read = getattr(response, "read1", response.read)  # read1: returns what arrived, so a trickle is seen
    done, window_start, window_bytes = start, time.monotonic(), 0
    try:
        with open(part, "ab" if start else "wb") as out:
            while True:
                if cancel is not None and cancel():
                    raise DownloadCancelled(f"download of {url} cancelled; run it again to resume")
                block = read(CHUNK_BYTES)
                if not block:
                    break
                if done == 0 and block.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
                    raise _Refused(_web_page(url))
                if done + len(block) > limits.max_bytes:
                    raise limits.too_many(url, done + len(block))
                out.write(block)
                done += len(block)
                window_bytes += len(block)
                now = time.monotonic()
                if now - limits.t0 > limits.max_seconds:
                    raise SkullVAEError(
                        f"download of {url} took over {limits.max_seconds:g} s ({_mb(done, total)}); run the same "
                        f"command again to resume, or {by_hand_hint(url)}"
                    )
                if now - window_start >= limits.stall_s:
                    if window_bytes < STALL_MIN_BYTES:
                        raise SkullVAEError(
                            f"download of {url} stalled: {window_bytes} bytes in the last {now - window_start:.0f} s "
                            f"({_mb(done, total)}); run the same command again to resume, or {by_hand_hint(url)}"
                        )
                    window_start, window_bytes = now, 0
                if progress is not None:
                    progress("download", done / total if total else 0.0, _mb(done, total))
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise SkullVAEError(
            f"download of {url} interrupted after {_mb(done, total)} ({exc or type(exc).__name__}); "
            f"run the same command again to resume, or {by_hand_hint(url)}"
        ) from None
    return done


def _web_page(url: str) -> str:
    return (
        f"download of {url} refused: the server sent a web page (HTML), not the model archive; a login or error "
        f"page? Open the URL in a browser, save the archive and run: skullvae models install FILE"
    )


def _content_range_starts_at(header: str | None, start: int) -> bool:
    """``Content-Range: bytes START-END/TOTAL`` starts where our partial file ends."""
    if not header or not header.startswith("bytes "):
        return False
    first = header[6:].split("-", 1)[0]
    return first.isdigit() and int(first) == start


def _verify(url: str, part: Path, sha256: str | None, size: int | None) -> None:
    got = part.stat().st_size if part.is_file() else 0
    if size is not None and got != size:
        part.unlink(missing_ok=True)
        raise SkullVAEError(f"download of {url} has {got} bytes, expected {size}; the file was removed, try again")
    if sha256:
        digest = sha256_file(part)
        if digest != sha256.lower():
            part.unlink(missing_ok=True)
            raise SkullVAEError(
                f"checksum mismatch for {url} (sha256 {digest[:12]}…, expected {sha256[:12]}…): the file was "
                "removed; try again, or report it if it persists"
            )


def _mb(done: int, total: int | None) -> str:
    return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
