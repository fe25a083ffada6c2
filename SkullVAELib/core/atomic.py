"""Write files atomically: to a temporary name in the same folder, then rename.

A reader (or a crash) never sees a half-written file at the final path. Temporary names
follow one pattern, ``.{final name}.{8 random characters}.tmp{extension}``; the writing
process holds an advisory lock on its temporary file, so a later run recognises the
temporaries left by a killed process (no lock held) and removes them
(:func:`remove_stale_temporaries`, called for every final path before writing it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError

try:  # POSIX advisory locks; Windows falls back to the age of the temporary
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TEMP_PATTERN = re.compile(r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\..*)?$")
TEMP_DIR_PATTERN = re.compile(r"^\.(?P<final>.+)\.[a-z0-9_]{8}\.tmpdir$")  # .mhd header + data file
STALE_AGE_WITHOUT_LOCKS_S = 24 * 3600  # only where advisory locks do not exist


def current_umask() -> int:
    """The process umask (read without changing it for good)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain ``open()`` gives a new file: 0666 & ~umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def _try_lock(fd: int) -> bool:
    """Take an exclusive non-blocking lock on ``fd``; False when another process holds one."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def is_temporary_name(name: str, final_name: str | None = None, folder: bool = False) -> bool:
    """True for names of our temporary files (folders with ``folder``), of ``final_name`` only when given."""
    match = (TEMP_DIR_PATTERN if folder else TEMP_PATTERN).match(name)
    return match is not None and (final_name is None or match.group("final") == final_name)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on a folder (POSIX flock on its descriptor; leaves no file).

    Held while temporaries are created (until their own lock is taken) and while stale ones are
    removed, so a cleaner never removes a temporary in the instant between its creation and its
    lock; and by output transactions while they rename. Degrades to no lock where the file
    system has none (or on Windows).
    """
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # e.g. ENOLCK on a network file system
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def create_temporary(final: Path, suffix: str = "", folder: bool = False) -> tuple[Path, int]:
    """A new locked temporary next to ``final`` (a file ``.NAME.XXXXXXXX.tmpSUFFIX``, or with
    ``folder`` a folder ``.NAME.XXXXXXXX.tmpdir``), after removing stale ones of ``final``.

    ``suffix`` is lower-cased (``.MHA`` -> ``.mha``), so a writer that picks its format by a
    case-sensitive extension writes the format the final name says.

    Returns ``(path, fd)``; the temporary counts as live until ``fd`` is closed. One-line
    SkullVAEError when the folder cannot be written.
    """
    make_parent(final)
    suffix = suffix.lower()  # ITK picks its writer by a case-sensitive extension: ".MHA" would write .mhd + .zraw
    with folder_lock(final.parent):
        _remove_stale(final.parent, final.name)
        try:
            if folder:
                path = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmpdir", dir=final.parent)
                fd = os.open(path, os.O_RDONLY)
            else:
                fd, path = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + suffix, dir=final.parent)
        except OSError as exc:
            raise write_error(exc, final) from None
        _try_lock(fd)
    return Path(path), fd


def make_temporary_folder(final: Path) -> tuple[Path, int]:
    """A locked temporary folder next to ``final`` (for formats written as several files, .mhd):
    ``(folder, fd)``; the lock lasts until ``fd`` is closed. One-line error when impossible."""
    return create_temporary(final, folder=True)


def remove_stale_temporaries(folder: str | os.PathLike, final_name: str | None = None) -> list[Path]:
    """Remove temporaries of our naming in ``folder`` that no running process is writing.

    A temporary is stale when no process holds its lock (the writer was killed); without
    POSIX locks, when it is older than a day. Plain files and our ``.tmpdir`` folders only.

    Args:
        folder: where to look (not recursive).
        final_name: only temporaries of this final file name (None: all of ours).

    Returns:
        The removed paths.
    """
    with folder_lock(folder):
        return _remove_stale(Path(folder), final_name)


def _remove_stale(folder: Path, final_name: str | None) -> list[Path]:
    """:func:`remove_stale_temporaries` with the folder lock already held."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if is_temporary_name(entry.name, final_name, folder=True):
            _remove_stale_folder(entry)
            continue
        if not is_temporary_name(entry.name, final_name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if fcntl is None:
                if time.time() - entry.stat().st_mtime < STALE_AGE_WITHOUT_LOCKS_S:
                    continue
                os.unlink(entry.path)
            else:
                fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                try:
                    if not _try_lock(fd):
                        continue  # a live writer holds it
                    os.unlink(entry.path)
                finally:
                    os.close(fd)
            removed.append(Path(entry.path))
        except OSError:
            continue  # vanished or not ours to remove: leave it
    return removed


def _remove_stale_folder(entry: os.DirEntry) -> None:
    """Remove one of our temporary folders when no process holds its lock (see remove_stale_temporaries)."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return
        if fcntl is None:
            if time.time() - entry.stat().st_mtime >= STALE_AGE_WITHOUT_LOCKS_S:
                shutil.rmtree(entry.path, ignore_errors=True)
            return
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            if _try_lock(fd):
                shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)
    except OSError:
        return


def refuse_special_file(path: str | os.PathLike, option: str = "output") -> None:
    """Refuse to replace a device node, FIFO or socket (``--out /dev/null`` as root would replace the
    device); regular files, symbolic links and absent paths pass."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise SkullVAEError(f"{option} is a device, FIFO or socket, not a file; refusing to replace it", path)


def write_error(exc: OSError, path: str | os.PathLike) -> SkullVAEError:
    """A one-line user error for a failed write (read-only folder, parent is a file, disk full, ...)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return SkullVAEError(f"cannot write: {reason}", path)


def replace_folder(staged: Path, final: Path) -> None:
    """Rename the finished folder ``staged`` to ``final`` (same file system), replacing an existing
    ``final``: the old folder is renamed aside first and deleted only after the new one is in
    place (put back if that rename fails), so ``final`` never names a half-written folder."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(staged, final)
    except OSError:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def make_parent(final: Path) -> None:
    """Create ``final``'s folder (and missing parents); one-line error when that is impossible."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SkullVAEError("cannot write: a parent of this path is a file, not a folder", final) from None
    except OSError as exc:
        raise write_error(exc, final) from None
    if not final.parent.is_dir():
        raise SkullVAEError("cannot write: a parent of this path is a file, not a folder", final)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it over ``final``.

    The temporary name keeps the final file's extension(s) in lower case (``suffix``, default
    taken from ``final``) so that writers that pick a format by extension (SimpleITK, VTK)
    still work. On any exception the temporary file is removed and ``final`` is untouched;
    inside one of our temporary folders (:func:`make_temporary_folder`) ``final`` is written directly;
    an OSError (read-only folder, disk full, ...) becomes a one-line SkullVAEError naming
    ``final``. The file gets the mode a plain ``open()`` would give (0666 & ~umask), even
    when the writer recreated it (safetensors writes 0600). A ``final`` that is itself an
    existing temporary of ours (an output transaction's) is written in place. A ``final`` that is a
    device, FIFO or socket is refused (renaming over ``/dev/null`` as root would replace the device).
    Temporary names are created with ``O_EXCL`` (:func:`tempfile.mkstemp`): a symbolic link planted
    at a temporary name is never followed.
    """
    final = Path(final)
    in_temporary_folder = is_temporary_name(final.parent.name, folder=True) and final.parent.is_dir()
    if (is_temporary_name(final.name) and final.is_file()) or in_temporary_folder:
        # already one of our (locked) temporaries, e.g. from outputs.OutputPlan, or inside a locked
        # temporary folder that is renamed into place as a whole: write it in place (taking the
        # folder's lock again here would wait for ourselves)
        try:
            yield final
        except OSError as exc:
            raise write_error(exc, final) from None
        return
    refuse_special_file(final)
    if suffix is None:
        name = final.name.lstrip(".")
        suffix = name[name.index(".") :] if "." in name else ""
    tmp_path, fd = create_temporary(final, suffix)  # locked until the rename: marks it as live
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, file_mode())
            os.replace(tmp_path, final)
        except OSError as exc:
            raise write_error(exc, final) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise
    finally:
        os.close(fd)


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    atomic_write_bytes(final, text.encode("utf-8"))
