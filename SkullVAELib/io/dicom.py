"""A CT as a hospital exports it: a folder of DICOM files, one series, read as one volume.

SimpleITK's GDCM series reader does the reading (slice order by position, rescale slope and intercept to HU, the
patient's LPS geometry). What it does not check is done here, from the files' headers, before any voxel is read:
- one series from the folder (a study exported as one folder holds several: the one named by ``--series``, else
  each is listed, none guessed);
- slices that stack into a grid: a gantry-tilted series (slices sheared along the table) or one with missing or
  uneven slices would be read onto a regular grid they do not lie on, and every output would land beside the
  patient's bone; both are refused in one line;
- the volume's size against the memory limits (:mod:`SkullVAELib.core.limits`).

GDCM sets the process's C locale to "C" when it reads or writes a file, and Python's default text encoding then
turns ASCII: a result record or a log with "γ" or "°" written after a DICOM read would fail. Every call into it
here keeps the locale as it was (:func:`keeping_locale`).
"""

from __future__ import annotations

import contextlib
import functools
import locale
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_volume
from SkullVAELib.io.headers import check_geometry

# slices whose positions step off the slice normal by more than this (degrees) are a tilted gantry's
TILT_TOLERANCE_DEG = 0.5
# slice steps that differ from their median by more than this share are missing or uneven slices
STEP_TOLERANCE = 0.05
_DESCRIPTION, _NUMBER = "0008|103e", "0020|0011"


@dataclass(frozen=True)
class SeriesInformation:
    """The header of a DICOM series, read from its files' headers (duck-types the parts of SimpleITK's
    ``ImageFileReader`` the input checks use: size, spacing, origin, direction, pixel type)."""

    files: tuple[str, ...]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    pixel_id: int

    def GetSize(self) -> tuple[int, int, int]:  # noqa: N802 - SimpleITK's reader's name
        return self.size

    def GetSpacing(self) -> tuple[float, float, float]:  # noqa: N802
        return self.spacing

    def GetOrigin(self) -> tuple[float, float, float]:  # noqa: N802
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def GetPixelID(self) -> int:  # noqa: N802
        return self.pixel_id

    def GetDimension(self) -> int:  # noqa: N802
        return 3

    def GetNumberOfComponents(self) -> int:  # noqa: N802
        return 1


@contextlib.contextmanager
def keeping_locale() -> Iterator[None]:
    """Run the block (GDCM's reading or writing) and put the process's locale back as it was."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _locale_kept(function):
    """``function`` run under :func:`keeping_locale`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with keeping_locale():
            return function(*args, **kwargs)

    return wrapper


@_locale_kept
def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM series (GDCM reads every file's header)."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


@_locale_kept
def series_information(folder: str | os.PathLike, series: str | None = None) -> SeriesInformation:
    """The series of ``folder`` (``series``: its number, description or UID, where the folder holds several; None:
    the only one), checked (slices on a grid, within the limits), no voxel read.

    Raises SkullVAEError naming the folder: no series, several and none chosen (each listed), a chosen one missing
    or ambiguous, a single slice, a tilted gantry, missing or uneven slices, geometry outside the plausible range,
    or over the size limits."""
    information = _checked_series(str(folder), series, _listing(Path(folder)))
    voxel_bytes = sitk.Image([1, 1, 1], information.pixel_id).GetSizeOfPixelComponent()
    check_volume(information.size, voxel_bytes, folder, what="DICOM series")  # the limits in force now
    return information


def _listing(folder: Path) -> tuple:
    """(name, size, mtime) of each file of ``folder``, sorted: what :func:`_checked_series`'s cache is keyed by, so a
    folder whose files change is read again."""
    try:
        entries = [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return ()
    return tuple(sorted(entries))


@functools.lru_cache(maxsize=8)
def _checked_series(folder_name: str, series: str | None, listing: tuple) -> SeriesInformation:
    """:func:`series_information` of the folder ``folder_name`` as its files are in ``listing``, but the size limits
    (kept for the few folders last asked about: a completion checks its input early, then reads it, and a batch
    sizes its workers by it first; GDCM reads every file's header each time, 0.25 s for 200 slices)."""
    folder = Path(folder_name)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise SkullVAEError("no DICOM series in this folder", folder)
    files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), _chosen_series(folder, ids, series)))
    if len(files) < 2:
        raise SkullVAEError("the DICOM series holds one slice; expected a 3D volume", folder)
    headers = [_header(name) for name in files]
    first = headers[0]
    row, column = (np.array(first.GetDirection(), dtype=float).reshape(3, 3)[:, a] for a in (0, 1))
    normal = np.cross(row, column)
    positions = np.array([h.GetOrigin() for h in headers], dtype=float)
    step = float(_check_stacking(positions, normal, folder))
    direction = np.stack([row, column, normal], axis=1)
    size = (*first.GetSize()[:2], len(files))
    spacing = (*first.GetSpacing()[:2], step)
    check_geometry(spacing, positions[0], direction.ravel(), folder)
    return SeriesInformation(files, size, spacing, tuple(positions[0]), tuple(direction.ravel()), first.GetPixelID())


@_locale_kept
def read_dicom_series(folder: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """The DICOM series of ``folder`` (``series``: as :func:`series_information` takes it) as a 3D image in its
    scanner units (CT: HU), after :func:`series_information`'s checks."""
    information = series_information(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(information.files))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise SkullVAEError("cannot read the DICOM series" + (f"; {reason}" if reason else ""), folder) from None
    except MemoryError:
        raise SkullVAEError("not enough memory to read the DICOM series", folder) from None


def _check_stacking(positions: np.ndarray, normal: np.ndarray, folder: Path) -> float:
    """The slice step (mm) of slices at ``positions`` (N, 3) in file order along ``normal``; SkullVAEError where
    they step off the normal (a tilted gantry) or unevenly (missing or uneven slices)."""
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    lengths = np.linalg.norm(steps, axis=1)
    if np.any(lengths <= 1e-6):
        raise SkullVAEError("the DICOM series holds two slices at one position", folder)
    tilt = float(np.degrees(np.arccos(np.clip(np.abs(along) / lengths, 0.0, 1.0))).max())
    if tilt > TILT_TOLERANCE_DEG:
        raise SkullVAEError(
            f"a gantry-tilted DICOM series (its slices step {tilt:.1f}° off their normal); resample it onto a "
            "regular grid first (Slicer's DICOM module offers to)",
            folder,
        )
    median = float(np.median(np.abs(along)))
    if np.any(np.abs(np.abs(along) - median) > STEP_TOLERANCE * median):
        raise SkullVAEError(
            f"the DICOM series has missing or uneven slices (steps {np.abs(along).min():.2f}-{np.abs(along).max():.2f} "
            "mm); complete or resample it first",
            folder,
        )
    return median


def _header(name: str) -> sitk.ImageFileReader:
    """A reader that has read the header of the DICOM file ``name``."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    reader.ReadImageInformation()
    return reader


def _chosen_series(folder: Path, ids: list[str] | tuple[str, ...], wanted: str | None) -> str:
    """The UID of the series of ``ids`` that ``wanted`` names (its number, its description case-insensitively, or its
    UID); the only one where ``wanted`` is None. SkullVAEError listing them where several match or none."""
    if wanted is None and len(ids) == 1:
        return ids[0]
    named = {uid: _series_names(folder, uid) for uid in ids}
    listed = "; ".join(f"{number or '-'} {text or uid} ({count} files)" for uid, (number, text, count) in named.items())
    if wanted is None:
        raise SkullVAEError(f"holds {len(ids)} DICOM series ({listed}); choose one with --series NUMBER", folder)
    key = wanted.strip().lower()
    found = [uid for uid, (number, text, _) in named.items() if key in (number.lower(), text.lower(), uid.lower())]
    if len(found) != 1:
        how = "several series match" if found else "no series matches"
        raise SkullVAEError(f"{how} --series {wanted!r} (it holds: {listed})", folder)
    return found[0]


def _series_names(folder: Path, uid: str) -> tuple[str, str, int]:
    """(series number, description, number of files) of the series ``uid`` of ``folder`` ("" where the files give
    none)."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    header = _header(files[0])
    number, text = (
        header.GetMetaData(tag).strip() if header.HasMetaDataKey(tag) else "" for tag in (_NUMBER, _DESCRIPTION)
    )
    return number, text, len(files)
