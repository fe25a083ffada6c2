"""What image headers say about geometry and data size, read before ITK reads them.

ITK silently repairs some headers: a NIfTI ``pixdim`` of 0, a NRRD ``spacings: nan`` or a
MetaImage ``Offset = nan`` come back as 1 mm or 0 mm, and a MetaImage whose ``ElementType``
does not match its data is reported on stderr in three lines. This module reads the header
fields itself (a few hundred bytes, hand-written because no library exposes the raw fields
before ITK repairs them) and:

- refuses geometry that is not finite, a spacing that is not positive or outside
  :data:`SPACING_RANGE_MM` (plausible for a head CT), an origin farther than
  :data:`MAX_ORIGIN_MM` from the scanner origin, a singular direction matrix;
- refuses a NIfTI ``vox_offset`` inside the header (negative, or before the voxels can start);
- refuses a MetaImage whose data holds another number of bytes than its header declares;
- returns warnings where a default is assumed (no spacing in a NRRD or MetaImage header,
  no orientation in a NIfTI header): :func:`SkullVAELib.io.image.read_skull` puts them in the
  image's ``metadata["warnings"]``.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError

SPACING_RANGE_MM = (0.05, 20.0)  # voxel sizes accepted, in mm: micro-CT to the coarsest clinical scout
MAX_ORIGIN_MM = 1e6  # an origin a kilometre away is a broken header, not a scanner position
NIFTI1_HEADER, NIFTI2_HEADER = 348, 540
_METATYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip
_NUMBER = re.compile(r"[-+]?(?:nan|inf(?:inity)?|\d+\.?\d*(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)", re.IGNORECASE)


def missing_spacing_warning(path: str | os.PathLike) -> str:
    """The warning of a header without voxel spacing (1 mm assumed, as ITK does)."""
    return f"{Path(path).name}: the header gives no voxel spacing; 1 mm was assumed (check the implant's scale)"


def check_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], path: str | os.PathLike
) -> None:
    """Refuse (one line naming ``path``) a geometry that is not finite, a spacing (mm) outside
    :data:`SPACING_RANGE_MM`, an origin beyond :data:`MAX_ORIGIN_MM` or a singular direction (3×3)."""
    low, high = SPACING_RANGE_MM
    spacing = [float(s) for s in spacing]
    text = "x".join(f"{s:g}" for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise SkullVAEError(f"voxel spacing {text} mm is not finite and positive; refusing a wrong-scale result", path)
    if not all(low <= s <= high for s in spacing):
        raise SkullVAEError(
            f"voxel spacing {text} mm is outside {low:g}-{high:g} mm, implausible for a head CT; "
            "fix the header's spacing",
            path,
        )
    origin = [float(o) for o in origin]
    if not all(math.isfinite(o) and abs(o) <= MAX_ORIGIN_MM for o in origin):
        raise SkullVAEError(f"origin ({', '.join(f'{o:g}' for o in origin)}) mm is not a finite position", path)
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(matrix).all() or abs(float(np.linalg.det(matrix))) < 1e-6:
        raise SkullVAEError("direction (axis orientation) matrix is not finite or is singular", path)


def header_warnings(path: str | os.PathLike) -> list[str]:
    """Check the raw geometry fields of a NIfTI, NRRD or MetaImage header (see the module docstring).

    Returns the warnings of assumed defaults; raises SkullVAEError for refused headers.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_warnings(path)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd_warnings(path)
    if name.endswith((".mha", ".mhd")):
        return _metaimage_warnings(path)
    return []


# --- NIfTI ---------------------------------------------------------------------------------
def nifti_layout(head: bytes, path: str | os.PathLike) -> tuple[str, int]:
    """(struct byte order "<" or ">", header size 348 or 540) of a NIfTI header."""
    for order in "<>":
        if len(head) >= 4 and struct.unpack(order + "i", head[:4])[0] in (NIFTI1_HEADER, NIFTI2_HEADER):
            size = struct.unpack(order + "i", head[:4])[0]
            if len(head) < size:
                break
            return order, size
    raise SkullVAEError("not a NIfTI file (bad header size field)", path)


def nifti_vox_offset(head: bytes, path: str | os.PathLike) -> int:
    """Byte offset of the voxels of a single-file NIfTI-1/-2; refused inside the header or not finite."""
    order, size = nifti_layout(head, path)
    if size == NIFTI1_HEADER:
        value = struct.unpack(order + "f", head[108:112])[0]
        minimum = NIFTI1_HEADER + 4  # the header and its 4-byte extension flag
    else:
        value = struct.unpack(order + "q", head[168:176])[0]
        minimum = NIFTI2_HEADER + 4
    if not math.isfinite(value) or value < minimum:
        raise SkullVAEError(
            f"NIfTI vox_offset {value:g} lies inside the header (at least {minimum}); the voxels would be misread",
            path,
        )
    return int(value)


def _nifti_fields(head: bytes, path: Path) -> tuple[list[float], int, int, list[float], list[float]]:
    """(pixdim[1..n] of the n <= 3 spatial axes, qform_code, sform_code, quaternion + offsets (6), srow (12))."""
    order, size = nifti_layout(head, path)
    if size == NIFTI1_HEADER:
        ndim = struct.unpack(order + "h", head[40:42])[0]
        pixdim = list(struct.unpack(order + "3f", head[80:92]))
        qform, sform = struct.unpack(order + "2h", head[252:256])
        quatern = list(struct.unpack(order + "6f", head[256:280]))
        srow = list(struct.unpack(order + "12f", head[280:328]))
    else:
        ndim = struct.unpack(order + "q", head[16:24])[0]
        pixdim = list(struct.unpack(order + "3d", head[112:136]))
        qform, sform = struct.unpack(order + "2i", head[344:352])
        quatern = list(struct.unpack(order + "6d", head[352:400]))
        srow = list(struct.unpack(order + "12d", head[400:496]))
    return pixdim[: max(1, min(int(ndim), 3))], qform, sform, quatern, srow  # a 2D file's pixdim[3] may be 0


def _nifti_warnings(path: Path) -> list[str]:

    try:
        with open_maybe_gzip(path) as stream:
            head = stream.read(NIFTI2_HEADER)
    except (OSError, EOFError) as exc:
        raise SkullVAEError(f"cannot read the NIfTI header ({exc})", path) from None
    nifti_vox_offset(head, path)
    pixdim, qform, sform, quatern, srow = _nifti_fields(head, path)
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        shown = "x".join(f"{p:g}" for p in pixdim)
        raise SkullVAEError(
            f"NIfTI pixdim (voxel spacing) {shown} is not finite and positive; refusing a wrong-scale result", path
        )
    if qform > 0 and not all(math.isfinite(v) for v in quatern):
        raise SkullVAEError("NIfTI qform (quaternion and offsets) holds values that are not finite", path)
    if sform > 0 and not all(math.isfinite(v) for v in srow):
        raise SkullVAEError("NIfTI sform (srow_x/y/z) holds values that are not finite", path)
    if qform <= 0 and sform <= 0:
        return [
            f"{path.name}: the NIfTI header gives no orientation (qform and sform codes 0); "
            "origin 0 and the default axis directions were assumed"
        ]
    return []


# --- NRRD and MetaImage text headers ------------------------------------------------------------
def _text_header(path: Path, end: bytes) -> str:
    try:
        with open(path, "rb") as stream:
            data = stream.read(1 << 16)
    except OSError as exc:
        raise SkullVAEError(f"cannot read file: {exc.strerror}", path) from None
    return data.split(end, 1)[0].decode("latin-1")


def _numbers(text: str, field: str, path: Path) -> list[float]:
    values = [float(v) for v in _NUMBER.findall(text)]
    if not all(math.isfinite(v) for v in values):
        raise SkullVAEError(f"header field '{field}' holds values that are not finite: {text.strip()[:80]}", path)
    return values


def _nrrd_warnings(path: Path) -> list[str]:
    fields = {}
    for line in _text_header(path, b"\n\n").splitlines()[1:]:
        if ":" in line and not line.startswith("#") and ":=" not in line:
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value
    for key in ("space origin", "space directions", "spacings", "axis mins", "axis maxs"):
        if key in fields:
            values = _numbers(fields[key], key, path)
            if key == "spacings" and not all(v > 0 for v in values):
                raise SkullVAEError(f"header field 'spacings' is not positive: {fields[key].strip()[:80]}", path)
    if "space directions" not in fields and "spacings" not in fields:
        return [missing_spacing_warning(path)]
    return []


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int]:
    """Header fields (keys lower-cased) and the byte offset just after the ElementDataFile line."""
    text = _text_header(path, b"\0\0\0\0")  # LOCAL data follows the ElementDataFile line
    fields, offset = {}, 0
    for line in text.splitlines(keepends=True):
        offset += len(line.encode("latin-1"))
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
    return fields, offset


def _metaimage_warnings(path: Path) -> list[str]:
    fields, offset = _metaimage_fields(path)
    for key in ("offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix", "rotation"):
        if key in fields:
            values = _numbers(fields[key], key, path)
            if key in ("elementspacing", "elementsize") and not all(v > 0 for v in values):
                raise SkullVAEError(f"header field '{key}' is not positive: {fields[key][:80]}", path)
    _check_metaimage_size(path, fields, offset)
    if "elementspacing" not in fields and "elementsize" not in fields:
        return [missing_spacing_warning(path)]
    return []


def _check_metaimage_size(path: Path, fields: dict[str, str], offset: int) -> None:
    """Refuse uncompressed MetaImage data whose byte count differs from DimSize × ElementType."""
    if fields.get("compresseddata", "false").lower() == "true":
        return  # zlib data: its size says nothing; ITK's own check applies
    element = fields.get("elementtype", "").upper()
    if element not in _METATYPE_BYTES or "dimsize" not in fields:
        return  # ITK refuses these itself in one line
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
        skip = int(fields.get("headersize", "0"))
    except ValueError:
        return
    expected = math.prod(dims) * channels * _METATYPE_BYTES[element]
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() == "LOCAL":
        available = os.stat(path).st_size - offset
    elif data_file.upper().startswith("LIST") or "%" in data_file or skip < 0:
        return
    else:
        available = os.stat(path.parent / data_file).st_size - skip
    if available != expected:
        shape = "x".join(map(str, dims))
        raise SkullVAEError(
            f"holds {available:,} bytes of voxels, its header declares {expected:,} ({shape} {element}): "
            "a wrong ElementType or a truncated file",
            path,
        )


def open_maybe_gzip(path: Path):
    """A binary stream of ``path``, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
