"""Checks on input image files before their voxels are read: bounded, regular, complete.

- Only regular files are read: a FIFO, ``/dev/zero`` or a folder named like an image would
  hang or never end. For ``.mhd`` the data file named by ``ElementDataFile`` is checked too.
- The size declared in the header is checked against :mod:`SkullVAELib.core.limits` before any
  voxel is allocated (SimpleITK's ``ReadImageInformation`` reads the header only).
- NIfTI (``.nii``, ``.nii.gz``) is verified to hold every voxel its header declares and,
  when gzipped, a complete gzip stream: ITK silently reads a truncated NIfTI as a half-empty
  volume (NRRD and MetaImage readers already fail on truncation). Hand-written with the
  standard library's gzip because ITK offers no such check; it reads at most what the
  header declares plus a small slack. The other names ITK's NIfTI reader takes (the two-file
  Analyze/NIfTI pair ``.hdr`` + ``.img``, ASCII ``.nia``) are refused: they would skip these checks.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import stat
import zlib
from pathlib import Path

import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_volume
from SkullVAELib.io.headers import check_geometry, header_warnings, nifti_vox_offset, open_maybe_gzip

IMAGE_HINT = "(.nrrd, .nii, .nii.gz, .mha, .mhd)"
_CHUNK = 1 << 20
_NIFTI_SLACK = 1 << 20  # bytes tolerated after the declared voxels (padding, vendor extras)
_NIFTI_OTHER = (".hdr", ".img", ".hdr.gz", ".img.gz", ".nia")  # ITK's NIfTI reader takes these too
_VERIFIED: set[tuple] = set()  # NIfTI files found complete (path, device, inode, size, mtime, bytes)


def require_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` (symlinks followed) must be an existing regular file; one-line error otherwise."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SkullVAEError(f"{what} not found", path) from None
    except OSError as exc:
        raise SkullVAEError(f"cannot read {what}: {exc.strerror}", path) from None
    if stat.S_ISDIR(mode):
        raise SkullVAEError(f"is a folder, expected an image file {IMAGE_HINT}", path)
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or special file"
        raise SkullVAEError(f"{what} is {kind}, not a regular file; refusing to read it", path)
    return path


def mhd_data_files(header: Path) -> list[Path]:
    """The data file(s) an ``.mhd`` header names (empty for ``LOCAL`` data in the header)."""
    try:
        with open(header, "rb") as stream:
            text = stream.read(1 << 16)  # MetaImage headers are a few hundred bytes
    except OSError as exc:
        raise SkullVAEError(f"cannot read file: {exc.strerror}", header) from None
    match = re.search(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    if match is None:
        return []
    name = match.group(1).decode("utf-8", "replace")
    if name.upper() == "LOCAL":
        return []
    if name.upper().startswith("LIST") or "%" in name:
        raise SkullVAEError("multi-file MetaImage data (LIST or a file pattern) is not supported", header)
    return [header.parent / name]


def nrrd_data_files(header: Path) -> list[Path]:
    """The detached data file(s) a NRRD header names (``data file:``); empty for attached data."""
    try:
        with open(header, "rb") as stream:
            text = stream.read(1 << 16)
    except OSError as exc:
        raise SkullVAEError(f"cannot read file: {exc.strerror}", header) from None
    head = text.split(b"\n\n", 1)[0]
    # teem matches field names in any case ("DATA FILE:", "Data File:"), as the reader must
    match = re.search(rb"^[ \t]*data ?file[ \t]*:\s*(.+?)\s*$", head, re.MULTILINE | re.IGNORECASE)
    if match is None:
        return []
    name = match.group(1).decode("utf-8", "replace")
    if name.upper().startswith("LIST") or "%" in name or " " in name.strip():
        raise SkullVAEError("multi-file NRRD data (LIST or a file pattern) is not supported", header)
    return [header.parent / name]


def data_files(path: str | os.PathLike) -> list[Path]:
    """Every file whose bytes make up the image at ``path`` (checked to be regular files): the file
    itself and, for MetaImage (``ElementDataFile``) and NRRD (``data file:``) headers, their data file."""
    path = require_regular_file(path)
    files = [path]
    name = path.name.lower()
    if name.endswith((".mhd", ".mha")):
        extra = mhd_data_files(path)
    elif name.endswith((".nrrd", ".nhdr")):
        extra = nrrd_data_files(path)
    else:
        extra = []
    for data in extra:
        files.append(require_regular_file(data, "data file named by the header"))
    return files


def pixel_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes of one voxel of the image whose header ``reader`` has read."""
    return sitk.Image([1] * reader.GetDimension(), reader.GetPixelID()).GetSizeOfPixelComponent()


def read_information(
    path: str | os.PathLike, warnings: list[str] | None = None, verify_voxels: bool = True, layers: bool = False
) -> sitk.ImageFileReader:
    """A reader that has read ``path``'s header only, after the regular-file, geometry and size checks.

    Raises SkullVAEError naming the file: not found, not a regular file, unreadable header,
    geometry not finite or implausible (:mod:`SkullVAELib.io.headers`), not a 3D scalar volume,
    over the size limits, or (with ``verify_voxels``) a truncated NIfTI, which takes decompressing
    it once per process. Defaults assumed for missing header fields (a spacing of 1 mm, ...) are
    appended to ``warnings`` when a list is given. With ``layers``, a 3D volume of several values
    per voxel is accepted (the layers of a Slicer segmentation, a ``list`` axis ITK reads as vector
    components), and counted in the size limits.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_NIFTI_OTHER):  # ITK reads them without the .nii checks (a truncated .img reads half empty)
        raise SkullVAEError(
            "Analyze/NIfTI pairs (.hdr + .img) and ASCII NIfTI (.nia) are not supported; convert it to .nii.gz", path
        )
    data_files(path)
    assumed = header_warnings(path)  # the raw fields, before ITK repairs them
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if name.endswith((".mha", ".mhd")):
        reader.SetImageIO("MetaImageIO")  # ITK finds it by a case-sensitive extension: not for "X.MHA"
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        hint = next((line.strip() for line in reason if "Could not create IO object" in line), "")
        raise SkullVAEError(
            f"cannot read this file as an image {IMAGE_HINT}" + (f"; {hint}" if hint else ""), path
        ) from None
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    dim = reader.GetDimension()
    shape = "x".join(map(str, size))
    if components != 1 and not layers:
        raise SkullVAEError(
            f"is a vector image with {components} components per voxel (4D); expected a 3D volume", path
        )
    if dim == 2 or (dim == 3 and min(size) < 2):
        raise SkullVAEError(f"is a 2D image (size {shape}); expected a 3D volume", path)
    if dim != 3:
        raise SkullVAEError(f"is a {dim}D image (size {shape}); expected a 3D volume", path)
    check_geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)
    if warnings is not None:
        warnings.extend(w for w in assumed if w not in warnings)
    voxel_bytes = pixel_bytes(reader) * components
    check_volume(size, voxel_bytes, path, what="image")
    if verify_voxels and (name.endswith(".nii") or name.endswith(".nii.gz")):
        st = os.stat(path)
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, math.prod(size) * voxel_bytes)
        if key not in _VERIFIED:  # a workflow checks its input once early, then reads it: decompress once
            verify_nifti_complete(path, math.prod(size) * voxel_bytes)
            _VERIFIED.add(key)
    return reader


def verify_nifti_complete(path: str | os.PathLike, voxel_bytes: int) -> None:
    """Check that a ``.nii``/``.nii.gz`` holds ``voxel_bytes`` of voxels after its header and,
    when gzipped, that the gzip stream is complete and intact (CRC, length)."""
    path = Path(path)
    try:
        with open_maybe_gzip(path) as stream:
            head = stream.read(540)
            offset = nifti_vox_offset(head, path)
            expected = offset + int(voxel_bytes)
            total = len(head)
            limit = expected + _NIFTI_SLACK
            while total <= limit:
                block = stream.read(_CHUNK)
                if not block:
                    break
                total += len(block)
    except EOFError:
        raise SkullVAEError(
            "truncated gzip stream: the file ends before its data do (incomplete download?)", path
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise SkullVAEError(f"corrupt gzip stream ({exc})", path) from None
    except OSError as exc:
        raise SkullVAEError(f"cannot read file: {exc.strerror or exc}", path) from None
    if total < expected:
        raise SkullVAEError(
            f"truncated: the header declares {expected:,} bytes of header and voxels, the file holds {total:,}", path
        )
    if total > limit:
        raise SkullVAEError(f"holds more data than its header declares ({expected:,} bytes)", path)
