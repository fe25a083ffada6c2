"""Issue 25 §1: a wrong-scale result is never silent. Headers whose geometry is not finite and
positive, or outside the plausible spacing range of a head CT, are refused with one line; a
NIfTI ``vox_offset`` inside the header and ±inf voxels are refused; a header without spacing
is read with 1 mm and says so; a MetaImage whose ElementType does not match its data is one line.

Every test writes its own bad file (ITK writes a good one, the test patches its header bytes).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.headers import SPACING_RANGE_MM
from SkullVAELib.io.image import SkullImage, read_skull, write_mask

pytestmark = pytest.mark.usefixtures("default_limits")


def _skull(spacing=(1.0, 1.5, 2.0)) -> SkullImage:
    mask = np.zeros((24, 20, 16), dtype=bool)
    mask[4:20, 4:16, 4:12] = True
    mask[8:16, 8:12, 6:10] = False
    return SkullImage(mask, origin=(1.0, 2.0, 3.0), spacing=spacing)


def _refused(path: Path) -> str:
    with pytest.raises(SkullVAEError) as info:
        read_skull(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _nifti(path: Path, **fields) -> Path:
    """A NIfTI-1 written by ITK, then header fields patched: pixdim (3 floats), codes (qform, sform),
    qoffset (3 floats), vox_offset (float)."""
    sitk.WriteImage(_skull().to_sitk(), str(path), False)
    data = bytearray(path.read_bytes())
    if "pixdim" in fields:
        struct.pack_into("<3f", data, 80, *fields["pixdim"])
    if "codes" in fields:
        struct.pack_into("<2h", data, 252, *fields["codes"])
    if "qoffset" in fields:
        struct.pack_into("<3f", data, 268, *fields["qoffset"])
    if "vox_offset" in fields:
        struct.pack_into("<f", data, 108, fields["vox_offset"])
    path.write_bytes(bytes(data))
    return path


_VOXELS = np.zeros((16, 20, 24), np.uint8)
_VOXELS[4:12, 4:16, 4:20] = 1
_VOXELS[6:10, 8:12, 8:16] = 0


def _nrrd(path: Path, *lines: str) -> Path:
    head = "NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 24 20 16\nencoding: raw\n"
    path.write_bytes((head + "".join(f"{line}\n" for line in lines) + "\n").encode() + _VOXELS.tobytes())
    return path


def _mha(path: Path, *lines: str, data: bytes | None = None) -> Path:
    head = "ObjectType = Image\nNDims = 3\nDimSize = 24 20 16\n" + "".join(f"{line}\n" for line in lines)
    path.write_bytes((head + "ElementDataFile = LOCAL\n").encode() + (_VOXELS.tobytes() if data is None else data))
    return path


LPS = "space: left-posterior-superior"


# --- spacing, origin and direction must be finite, positive and plausible -----------------------------
def test_nifti_pixdim_zero_without_orientation_is_refused_not_read_as_1_mm(tmp_path):
    path = _nifti(tmp_path / "zero.nii", pixdim=(0.0, 0.0, 0.0), codes=(0, 0))
    assert "pixdim" in _refused(path) and "0x0x0" in _refused(path)


def test_nifti_pixdim_zero_with_a_qform_is_refused(tmp_path):
    assert "not finite and positive" in _refused(_nifti(tmp_path / "zero.nii", pixdim=(0.0, 1.0, 1.0)))


def test_nifti_nan_origin_is_refused(tmp_path):
    path = _nifti(tmp_path / "nan.nii", qoffset=(float("nan"), 0.0, 0.0), codes=(1, 0))
    assert "not finite" in _refused(path)


@pytest.mark.parametrize(
    ("name", "lines", "expected"),
    [
        ("huge.nrrd", ("spacings: 1e300 1 1",), "outside 0.05-20 mm"),
        ("tiny.nrrd", (LPS, "space directions: (0.001,0,0) (0,1,0) (0,0,1)"), "outside 0.05-20 mm"),
        ("nan_spacing.nrrd", ("spacings: nan 1 1",), "not finite"),
        ("zero_spacing.nrrd", ("spacings: 0 1 1",), "not positive"),
        ("nan_origin.nrrd", (LPS, "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (nan,0,0)"), "finite"),
        ("inf_origin.nrrd", (LPS, "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (inf,0,0)"), "finite"),
        ("far_origin.nrrd", (LPS, "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (1e300,0,0)"), "finite"),
        ("nan_direction.nrrd", (LPS, "space directions: (nan,0,0) (0,1,0) (0,0,1)"), "not finite"),
        ("flat_direction.nrrd", (LPS, "space directions: (1,0,0) (1,0,0) (0,0,1)"), "singular"),
    ],
)
def test_nrrd_geometry_that_is_not_finite_positive_and_plausible_is_refused(tmp_path, name, lines, expected):
    assert expected in _refused(_nrrd(tmp_path / name, *lines))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (("ElementType = MET_UCHAR", "Offset = nan 0 0"), "not finite"),
        (("ElementType = MET_UCHAR", "ElementSpacing = 0 1 1"), "not positive"),
        (("ElementType = MET_UCHAR", "ElementSpacing = 25 1 1"), "outside"),
        (("ElementType = MET_UCHAR", "TransformMatrix = 1 0 0 0 inf 0 0 0 1"), "not finite"),
    ],
)
def test_metaimage_geometry_that_is_not_finite_or_plausible_is_refused(tmp_path, lines, expected):
    assert expected in _refused(_mha(tmp_path / "bad.mha", *lines))


def test_the_spacing_range_bounds_are_accepted(tmp_path):
    low, high = SPACING_RANGE_MM
    for spacing in ((low, 1.0, 1.0), (1.0, 1.0, high)):
        write_mask(_skull(spacing), tmp_path / "edge.nrrd")
        assert np.allclose(read_skull(tmp_path / "edge.nrrd").spacing, spacing)


# --- a default spacing is said, not hidden ------------------------------------------------------------
def test_missing_spacing_reads_as_1_mm_with_a_warning(tmp_path):
    for path in (_nrrd(tmp_path / "bare.nrrd"), _mha(tmp_path / "bare.mha", "ElementType = MET_UCHAR")):
        skull = read_skull(path)
        assert np.array_equal(skull.spacing, [1.0, 1.0, 1.0])
        assert any("no voxel spacing" in w and "1 mm" in w for w in skull.metadata["warnings"]), path


def test_a_header_with_spacing_has_no_warning(tmp_path):
    write_mask(_skull(), tmp_path / "good.nrrd")
    assert read_skull(tmp_path / "good.nrrd").metadata["warnings"] == []


def test_nifti_without_orientation_says_what_it_assumed(tmp_path):
    skull = read_skull(_nifti(tmp_path / "no_orientation.nii", codes=(0, 0)))
    assert np.allclose(skull.spacing, (1.0, 1.5, 2.0))
    assert any("no orientation" in w for w in skull.metadata["warnings"])


# --- NIfTI vox_offset, infinite voxels, MetaImage type mismatch ---------------------------------------
@pytest.mark.parametrize("offset", [-1000.0, 0.0, 100.0, float("nan")])
def test_nifti_vox_offset_inside_the_header_is_refused(tmp_path, offset):
    assert "vox_offset" in _refused(_nifti(tmp_path / "offset.nii", vox_offset=offset))


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_float_mask_with_infinite_voxels_is_refused(tmp_path, value):
    """Read as a binary mask (forced, as ``--input-kind binary`` does) or as a CT, ±inf is refused."""
    mask = _skull().mask.astype(np.float32)
    ct = np.where(_skull().mask, 1500.0, -1000.0).astype(np.float32)
    for name, array, kind in (("mask.nrrd", mask, "binary"), ("ct.nrrd", ct, "auto")):
        array[3, 3, 3] = value
        path = tmp_path / name
        sitk.WriteImage(_skull().to_sitk(array, pixel_type=np.float32), str(path))
        with pytest.raises(SkullVAEError, match="infinite") as info:
            read_skull(path, kind=kind)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_metaimage_element_type_mismatch_is_one_line_on_stderr(tmp_path):
    """ITK's MetaImage reader prints two lines of its own to stderr before failing: the size is checked first."""
    bad = _mha(tmp_path / "float.mha", "ElementType = MET_FLOAT", "ElementSpacing = 1 1 1")
    assert "MET_FLOAT" in _refused(bad) and "30,720" in _refused(bad)
    argv = [
        sys.executable,
        "-m",
        "SkullVAELib",
        "complete",
        "--input",
        str(bad),
        "--output",
        str(tmp_path / "o.seg.nrrd"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "float.mha" in done.stderr and "ElementType" in done.stderr


def test_detached_metaimage_data_of_the_wrong_size_is_refused(tmp_path):
    (tmp_path / "voxels.raw").write_bytes(_VOXELS.tobytes())
    header = tmp_path / "double.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 24 20 16\nElementType = MET_DOUBLE\nElementDataFile = voxels.raw\n"
    )
    assert "61,440" in _refused(header)


def test_complete_refuses_a_zero_spacing_nifti_with_one_line(tmp_path):
    """End to end: the call that gave a 6.5 cm³ implant instead of 25.5 now exits 2 and writes nothing."""
    bad = _nifti(tmp_path / "zero.nii", pixdim=(0.0, 0.0, 0.0), codes=(0, 0))
    out = tmp_path / "out.seg.nrrd"
    argv = [sys.executable, "-m", "SkullVAELib", "complete", "--input", str(bad), "--output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pixdim" in done.stderr and not out.exists()
