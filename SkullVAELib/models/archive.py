"""Bundle archives: pack a model folder into a .zip, unpack a .zip or .tar safely.

A release asset is one archive holding one bundle folder (``NAME/config.json``, ...).
Unpacking refuses absolute paths, ``..`` members, links and device files: an archive
from the internet never writes outside the folder it is unpacked into.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.errors import SkullVAEError

# Files of a bundle folder that are not shipped: resumable training state and temp files.
EXCLUDED_PARTS = ("checkpoints",)
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same bundle packs to the same bytes


def is_archive(path: str | os.PathLike) -> bool:
    """True for a .zip or a (compressed) tar file, judged by its content."""
    path = Path(path)
    if not path.is_file():
        return False
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def pack_bundle(folder: str | os.PathLike, archive: str | os.PathLike, top: str | None = None) -> Path:
    """Write ``folder`` (a bundle) into a .zip whose single top folder is ``top`` (default: the folder name).

    Training checkpoints and hidden files are left out; entries are sorted with fixed
    timestamps so that packing twice gives the same bytes (and the same sha256).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SkullVAEError("not a SkullVAE model bundle (no config.json)", folder)
    top = top or folder.name
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") or part in EXCLUDED_PARTS for part in p.relative_to(folder).parts)
    )
    with atomic_path(archive) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path in files:
                info = zipfile.ZipInfo(f"{top}/{path.relative_to(folder).as_posix()}", date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
    return Path(archive)


def unpack_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a .zip or .tar[.gz|.bz2|.xz] into the existing folder ``dest``; returns ``dest``.

    Raises SkullVAEError naming the archive for a corrupt archive or an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, dest)
        else:
            raise SkullVAEError("not a .zip or .tar archive (corrupt or partial download?)", archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise SkullVAEError(f"corrupt archive ({type(exc).__name__}: {exc})", archive) from None
    return dest


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SkullVAEError(f"unsafe path in archive: {name!r} (refused)", archive)
    return path


def _unpack_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _safe_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise SkullVAEError(f"link in archive: {info.filename!r} (refused)", archive)
        bad = zf.testzip()  # CRC of every member: a damaged archive fails here, not half-unpacked
        if bad is not None:
            raise SkullVAEError(f"corrupt archive member {bad!r} (CRC mismatch)", archive)
        zf.extractall(dest)


def _unpack_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise SkullVAEError(f"link or special file in archive: {member.name!r} (refused)", archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second line of defence
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)  # noqa: S202 (members checked above)


def bundle_root(folder: str | os.PathLike) -> Path:
    """The bundle inside an unpacked archive: ``folder`` itself or its single sub-folder with config.json."""
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
    candidates = [p for p in subs if (p / "config.json").is_file()]
    if len(candidates) == 1:
        return candidates[0]
    raise SkullVAEError(
        "the archive holds no model bundle (expected one folder with config.json)"
        if not candidates
        else f"the archive holds {len(candidates)} model bundles; install them one at a time",
    )
