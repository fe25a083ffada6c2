"""Bundle archives: pack a model folder into a .zip, unpack a .zip or .tar safely.

A release asset is one archive holding one bundle folder (``NAME/config.json``, ...).
Unpacking refuses absolute paths, ``..`` members, links and device files: an archive
from the internet never writes outside the folder it is unpacked into. Before anything is
written it also refuses an archive of more than :data:`MAX_MEMBERS` members or whose members
declare more than its unpacked-size limit (:func:`unpacked_limit`: the registry's declared
``unpacked_size``, else :data:`MAX_RATIO` times the archive plus :data:`RATIO_SLACK_BYTES`, never
over :data:`MAX_UNPACKED_BYTES`), an encrypted, empty or oddly compressed zip, each in one line.
A tar is read through :class:`_BoundedTarStream`: a pax or GNU long-name header, which tarfile reads
whole into memory, may hold at most :data:`MAX_TAR_HEADER_BYTES` (a 300 KB .tar.gz declaring a 300 MB
header would otherwise allocate 300 MB just to be recognised as a tar).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.errors import SkullVAEError

# Files of a bundle folder that are not shipped: resumable training state and temp files.
EXCLUDED_PARTS = ("checkpoints",)
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)  # fixed timestamps: the same bundle packs to the same bytes
MAX_MEMBERS = 1000  # a bundle is a dozen files; an atlas set adds one per training skull
MAX_UNPACKED_BYTES = 4 * 2**30  # 4 GiB: ten times the largest bundle we build (weights + atlas + refiner)
MAX_RATIO = 20  # weights and gzipped masks barely compress: 20x is generous, a zip bomb is 1000x
RATIO_SLACK_BYTES = 64 * 2**20  # small archives of small, compressible files (JSON, Markdown)
MAX_TAR_HEADER_BYTES = 2**20  # one read of a tar header (pax, GNU long name): a real one is bytes to kilobytes
_TAR_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))  # as tarfile's "r:*"
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, OSError, ValueError,
           RuntimeError, NotImplementedError, zlib.error, lzma.LZMAError)  # fmt: skip


def unpacked_limit(archive_bytes: int, declared: int | None = None) -> int:
    """Most bytes an archive of ``archive_bytes`` may unpack to: ``declared`` (a registry entry's
    ``unpacked_size``) when given, else ``MAX_RATIO`` × the archive + ``RATIO_SLACK_BYTES``; at most
    :data:`MAX_UNPACKED_BYTES` either way."""
    limit = int(declared) if declared else MAX_RATIO * int(archive_bytes) + RATIO_SLACK_BYTES
    return min(limit, MAX_UNPACKED_BYTES)


def is_archive(path: str | os.PathLike) -> bool:
    """True for a .zip or a (compressed) tar file, judged by its content; SkullVAEError naming the
    file for a tar whose first header is over :data:`MAX_TAR_HEADER_BYTES`."""
    path = Path(path)
    if not path.is_file():
        return False
    return zipfile.is_zipfile(path) or _is_tar(path)


def pack_bundle(
    folder: str | os.PathLike, archive: str | os.PathLike, top: str | None = None, overwrite: bool = False
) -> Path:
    """Write ``folder`` (a bundle) into a .zip whose single top folder is ``top`` (default: the folder name).

    Training checkpoints and hidden files are left out; entries are sorted with fixed
    timestamps so that packing twice gives the same bytes (and the same sha256). An existing
    ``archive`` is replaced only with ``overwrite``; an ``archive`` inside ``folder`` is refused.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SkullVAEError("not a SkullVAE model bundle (no config.json)", folder)
    _check_pack_destination(folder, Path(archive), overwrite)
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


def _check_pack_destination(folder: Path, archive: Path, overwrite: bool) -> None:
    """Refuse an archive path inside the bundle being packed, a folder, or (without ``overwrite``) a file."""
    if archive.resolve() == folder.resolve() or folder.resolve() in archive.resolve().parents:
        raise SkullVAEError(f"--out is inside the bundle being packed ({folder}); write the archive elsewhere", archive)
    if archive.is_dir():
        raise SkullVAEError("--out is a folder; give the archive's file name (.zip)", archive)
    if (archive.is_file() or archive.is_symlink()) and not overwrite:  # a device node: atomic_path's error
        raise SkullVAEError("already exists; give --overwrite to replace it", archive)


def unpack_archive(archive: str | os.PathLike, dest: str | os.PathLike, max_bytes: int | None = None) -> Path:
    """Unpack a .zip or .tar[.gz|.bz2|.xz] into the folder ``dest`` (made); returns ``dest``.

    ``max_bytes``: the most the members may unpack to (default :func:`unpacked_limit` of the
    archive's size). Raises SkullVAEError naming the archive, before writing anything, for a
    corrupt, encrypted, empty or oversized archive or an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    if max_bytes is None:
        max_bytes = unpacked_limit(os.stat(archive).st_size)
    try:
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, dest, max_bytes)
        elif _is_tar(archive):
            _unpack_tar(archive, dest, max_bytes)
        else:
            raise SkullVAEError("not a .zip or .tar archive (corrupt or partial download?)", archive)
    except _ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SkullVAEError(
            f"corrupt archive ({type(exc).__name__}{': ' + reason if reason else ''})", archive
        ) from None
    return dest


def _check_totals(count: int, total: int, max_bytes: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise SkullVAEError(f"the archive holds over {MAX_MEMBERS} members; not a model bundle (refused)", archive)
    if total > max_bytes:
        raise SkullVAEError(
            f"the archive unpacks to over {max_bytes / 2**20:,.0f} MiB (its members declare {total / 2**20:,.0f} MiB "
            "or more); refused before writing (an archive bomb, or not a model bundle)",
            archive,
        )


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SkullVAEError(f"unsafe path in archive: {name!r} (refused)", archive)
    return path


def _unpack_zip(archive: Path, dest: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if not members:
            raise SkullVAEError("empty archive: it holds no files", archive)
        _check_totals(len(members), sum(info.file_size for info in members), max_bytes, archive)
        for info in members:
            _safe_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                raise SkullVAEError(f"link in archive: {info.filename!r} (refused)", archive)
            if info.flag_bits & 0x1:
                raise SkullVAEError(
                    f"encrypted (password-protected) member {info.filename!r}; pack the bundle without a password",
                    archive,
                )
            if info.compress_type not in _ZIP_METHODS:
                raise SkullVAEError(
                    f"member {info.filename!r} uses zip compression method {info.compress_type}, which Python "
                    "cannot read; pack it with deflate (skullvae models pack does)",
                    archive,
                )
        bad = zf.testzip()  # CRC of every member: a damaged archive fails here, not half-unpacked
        if bad is not None:
            raise SkullVAEError(f"corrupt archive member {bad!r} (CRC mismatch)", archive)
        zf.extractall(dest)


class _BoundedTarStream:
    """The (decompressed) bytes of a tar for :mod:`tarfile`, refusing any one read of more than
    :data:`MAX_TAR_HEADER_BYTES`: tarfile reads headers in 512-byte blocks and member data in 16 KiB
    chunks, but a pax or GNU long-name header whole, however large it declares itself."""

    def __init__(self, raw, archive: Path) -> None:
        self._raw, self._archive = raw, archive

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_TAR_HEADER_BYTES:
            raise SkullVAEError(
                f"a tar header declares over {MAX_TAR_HEADER_BYTES // 2**20} MiB; not a model bundle (refused)",
                self._archive,
            )
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tarfile.TarFile]:
    """``tarfile.open(archive)`` (plain, gzip, bzip2 or xz) through :class:`_BoundedTarStream`."""
    with open(archive, "rb") as probe:
        magic = probe.read(6)
    opener = next((o for prefix, o in _TAR_OPENERS if magic.startswith(prefix)), open)
    with opener(archive, "rb") as raw, tarfile.open(fileobj=_BoundedTarStream(raw, archive), mode="r:") as tf:
        yield tf


def _is_tar(archive: Path) -> bool:
    """``tarfile.is_tarfile`` with headers bounded (an oversized one raises SkullVAEError naming the archive)."""
    try:
        with _open_tar(Path(archive)):
            return True
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError):
        return False


def _unpack_tar(archive: Path, dest: Path, max_bytes: int) -> None:
    with _open_tar(archive) as tf:
        members, total = [], 0
        while (member := tf.next()) is not None:  # headers one by one: stop at the first over a limit
            members.append(member)
            total += member.size
            _check_totals(len(members), total, max_bytes, archive)
            _safe_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise SkullVAEError(f"link or special file in archive: {member.name!r} (refused)", archive)
        if not members:
            raise SkullVAEError("empty archive: it holds no files", archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second line of defence
            tf.extractall(dest, members=members, filter="data")
        else:
            tf.extractall(dest, members=members)  # noqa: S202 (members checked above)


def bundle_root(folder: str | os.PathLike) -> Path:
    """The bundle inside an unpacked archive: ``folder`` itself or its single sub-folder with config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SkullVAEError("the archive holds no model bundle (expected one folder with config.json)")
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
