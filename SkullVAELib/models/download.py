"""Download one file over HTTP(S) with resume, progress, cancel and sha256 verification.

Written on ``urllib`` (standard library) on purpose: the Slicer module runs this before
its Python dependencies are installed, and a resumable download is a few lines of
``Range: bytes=N-`` on top of ``urlopen`` (``requests`` adds nothing we need and is not
always present in Slicer's Python). The bytes go to ``FILE.part``; only a complete file
whose size and sha256 match is renamed to ``FILE``. An interrupted download keeps the
``.part`` so that the next call resumes it; a wrong size or checksum removes it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from SkullVAELib import __version__
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback

CHUNK_BYTES = 1 << 16
TIMEOUT_S = 30.0
PART_SUFFIX = ".part"


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
) -> Path:
    """Fetch ``url`` into ``dest``, resuming ``dest.part`` when it exists.

    Args:
        url: http(s) or file URL.
        dest: final path; written only when the file is complete and verified.
        sha256: expected hex digest (verified when given); size: expected bytes.
        progress: ``progress("download", fraction, "12.3 of 40.0 MB")``.
        cancel: polled between chunks; True stops with :class:`DownloadCancelled`.
    Returns ``dest``. Raises SkullVAEError (one line naming the URL) on network errors,
    a wrong size or a wrong checksum (the partial file is then removed).
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
    if size is None or start < size:
        _fetch(url, part, start, size, progress, cancel, timeout)
    _verify(url, part, sha256, size)
    os.replace(part, dest)
    if progress is not None:
        progress("download", 1.0, f"verified {dest.name}")
    return dest


def _fetch(url, part: Path, start: int, size, progress, cancel, timeout) -> None:
    headers = {"User-Agent": f"skullvae/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send: the partial file may be complete
            return
        raise SkullVAEError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {by_hand_hint(url)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SkullVAEError(f"cannot download {url}: {reason}; {by_hand_hint(url)}") from None
    with response:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0  # the server ignored the range: start again from the first byte
        elif start and not _content_range_starts_at(response.headers.get("Content-Range"), start):
            start = 0
            response.close()
            part.unlink(missing_ok=True)
            return _fetch(url, part, 0, size, progress, cancel, timeout)
        length = response.headers.get("Content-Length")
        total = size if size is not None else (start + int(length) if length and length.isdigit() else None)
        done = start
        try:
            with open(part, "ab" if start else "wb") as out:
                while True:
                    if cancel is not None and cancel():
                        raise DownloadCancelled(f"download of {url} cancelled; run it again to resume")
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress("download", done / total if total else 0.0, _mb(done, total))
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise SkullVAEError(
                f"download of {url} interrupted after {_mb(done, total)} ({exc or type(exc).__name__}); "
                f"run the same command again to resume, or {by_hand_hint(url)}"
            ) from None
    if total is not None and done < total:
        raise SkullVAEError(
            f"download of {url} interrupted after {_mb(done, total)}; run the same command again to resume, "
            f"or {by_hand_hint(url)}"
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
