"""A CT as a hospital exports it: a folder of DICOM files, one series, read as one volume.

SimpleITK's GDCM series reader does the reading (slice order by position, rescale slope and intercept to HU, the
patient's LPS geometry). What it does not check is done here, from the files' headers, before any voxel is read:
- one series from the folder (a study exported as one folder holds several: the one named by ``--series``, else
  each is listed, none guessed);
- slices that stack into a grid (:mod:`SkullVAELib.io.slice_stack`): a gantry-tilted series (slices sheared along
  the table), which SimpleITK's reader would put onto a regular grid the voxels do not lie on, is resampled onto
  the regular grid along its slices' normal, as Slicer's DICOM module regularises one, and its result says so;
  unevenly spaced slices (a missing one, two slice distances) are blended onto the finest step, and a wider gap
  (more than two slices missing in a row) is refused in one line;
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
from SkullVAELib.io.grid_header import GridHeader
from SkullVAELib.io.headers import check_geometry
from SkullVAELib.io.slice_stack import SliceStack, regularise, stack_slices, tilt_note

_DESCRIPTION, _NUMBER, _SERIES_UID, _MODALITY = "0008|103e", "0020|0011", "0020|000e", "0008|0060"
# modalities whose values hold no bone threshold (a CT's HU): refused by name, not read as a mask or a CT
NOT_BONE_MODALITIES = {"MR": "magnetic resonance", "PT": "PET", "NM": "nuclear medicine", "US": "ultrasound"}


@dataclass(frozen=True)
class SeriesInformation(GridHeader):
    """The header of a DICOM series, read from its files' headers: the regular grid the series is read onto (a
    tilted one's resampled grid), its ``files`` in slice order, and ``stack``, where its slices lie."""

    files: tuple[str, ...] = ()
    stack: SliceStack | None = None

    @property
    def notes(self) -> list[str]:
        """What reading the series changed that its result should say (a tilted gantry's resampling)."""
        return tilt_note(self.stack) if self.stack is not None else []


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
def dicom_file_series(path: str | os.PathLike) -> tuple[Path, str] | None:
    """(its folder, its series' UID) where ``path`` is a DICOM file (one slice of a series, as Slicer's "Add data"
    takes one: the series it belongs to is read); None for anything else."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            stream.seek(128)
            if stream.read(4) != b"DICM":  # the DICOM file's preamble (PS3.10 7.1)
                return None
    except OSError:
        return None
    header = _header(str(path))
    uid = header.GetMetaData(_SERIES_UID).strip() if header.HasMetaDataKey(_SERIES_UID) else ""
    if not uid:
        raise SkullVAEError("a DICOM file without a series UID; give the folder of its series", path)
    return path.parent, uid


@_locale_kept
def series_information(folder: str | os.PathLike, series: str | None = None) -> SeriesInformation:
    """The series of ``folder`` (``series``: its number, description or UID, where the folder holds several; None:
    the only one), checked (slices on a grid, within the limits), no voxel read.

    Raises SkullVAEError naming the folder: no series, several and none chosen (each listed), a chosen one missing
    or ambiguous, a single slice, a stack no gantry tilts so far, a gap of several missing slices, slices off one
    line, geometry outside the plausible range, or over the size limits."""
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
        frames = _header(files[0]).GetSize()[2]
        if frames > 1:  # ITK does not read a multi-frame file's per-frame positions: its spacing would be a guess
            raise SkullVAEError(
                f"the DICOM series is one multi-frame file ({frames} frames), whose slice positions are not read "
                "reliably here; export it as one file a slice, or convert it to NRRD (Slicer's DICOM module) first",
                folder,
            )
        raise SkullVAEError("the DICOM series holds one slice; expected a 3D volume", folder)
    headers = [_header(name) for name in files]
    first = headers[0]
    modality = first.GetMetaData(_MODALITY).strip().upper() if first.HasMetaDataKey(_MODALITY) else ""
    if modality in NOT_BONE_MODALITIES:
        raise SkullVAEError(
            f"a DICOM series of modality {modality} ({NOT_BONE_MODALITIES[modality]}): bone is found in a CT (a "
            "cone-beam CT too) or a mask; give one of those",
            folder,
        )
    row, column = (np.array(first.GetDirection(), dtype=float).reshape(3, 3)[:, a] for a in (0, 1))
    positions = np.array([h.GetOrigin() for h in headers], dtype=float)
    stack = stack_slices(positions, row, column, first.GetSpacing()[:2], first.GetSize()[:2], folder)
    size, spacing, origin, direction = stack.regular_grid()
    check_geometry(spacing, origin, direction.ravel(), folder)
    return SeriesInformation(
        size, tuple(spacing), tuple(origin), tuple(direction.ravel()), first.GetPixelID(), files=files, stack=stack
    )


@_locale_kept
def read_dicom_series(folder: str | os.PathLike, series: str | None = None) -> sitk.Image:
    """The DICOM series of ``folder`` (``series``: as :func:`series_information` takes it) as a 3D image in its
    scanner units (CT: HU) on the series' regular grid (a tilted gantry's or an uneven series resampled onto it),
    after :func:`series_information`'s checks."""
    information = series_information(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(information.files))
    shown = reader.GetGlobalWarningDisplay()
    reader.SetGlobalWarningDisplay(False)  # ITK's "non uniform sampling" on stderr: checked and said here
    try:
        return regularise(reader.Execute(), information.stack)
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise SkullVAEError("cannot read the DICOM series" + (f"; {reason}" if reason else ""), folder) from None
    except MemoryError:
        raise SkullVAEError("not enough memory to read the DICOM series", folder) from None
    finally:
        reader.SetGlobalWarningDisplay(shown)


def _header(name: str) -> sitk.ImageFileReader:
    """A reader that has read the header of the DICOM file ``name``; SkullVAEError naming it where GDCM reads no
    image from it (a DICOMDIR, a report, a truncated file)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise SkullVAEError(
            "cannot read it as a DICOM image (a DICOMDIR, a report, an unreadable file? give the folder of its series)",
            name,
        ) from None
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
