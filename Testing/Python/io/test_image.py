"""Reading and writing skulls and scalar maps: geometry kept bit for bit, bad input rejected."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage, read_scalar, read_skull, write_mask, write_scalar
from SkullVAELib.io.outputs import VOLUME_EXTENSIONS, OutputPlan


def _rotation(angle_deg: float, axis: int) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def _oblique_shell(shape=(40, 36, 28)) -> SkullImage:
    """A hollow ellipsoid on an oblique, anisotropic, off-origin grid."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    mask = (r > 0.55) & (r < 0.8)
    direction = _rotation(17.3, 0) @ _rotation(-8.9, 2)
    return SkullImage(
        mask, origin=(-120.2, -127.846117, -10.2158), spacing=(0.451172, 0.4511719, 0.633), direction=direction
    )


def _write_array(path, array_kji: np.ndarray, like: SkullImage | None = None) -> None:
    img = sitk.GetImageFromArray(array_kji)
    if like is not None:
        img.SetOrigin(tuple(like.origin))
        img.SetSpacing(tuple(like.spacing))
        img.SetDirection(tuple(like.direction.ravel()))
    sitk.WriteImage(img, str(path))


@pytest.mark.parametrize("ext", ["mha", "mhd"])
def test_round_trip_bit_for_bit(tmp_path, ext):
    skull = _oblique_shell()
    path = tmp_path / f"skull.{ext}"
    write_mask(skull, path)
    back = read_skull(path)
    assert back.same_geometry(skull)
    assert np.array_equal(back.mask, skull.mask)
    assert back.metadata["kind"] == "binary"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.parametrize("ext", [".MHA", ".Mha", ".MHD", ".NII", ".NII.GZ", ".NRRD"])
def test_upper_case_extension_round_trips_as_its_format(tmp_path, ext):
    """ITK picks writers by a case-sensitive extension: "u.MHA" was written as an empty file."""
    skull = _oblique_shell()
    path = tmp_path / f"skull{ext}"
    write_mask(skull, path)
    back = read_skull(path)
    assert np.array_equal(back.mask, skull.mask)
    assert np.allclose(back.origin, skull.origin, atol=1e-4) and np.allclose(back.spacing, skull.spacing, atol=1e-6)
    assert np.allclose(back.direction, skull.direction, atol=1e-6)
    if ext.lower() == ".mha":
        assert back.same_geometry(skull)
    expected = {path.name} | ({"skull.zraw"} if ext == ".MHD" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected  # no stray .mhd/.zraw, no temporary


def test_upper_case_mha_through_an_output_plan(tmp_path):
    """As ``complete --uncertainty u.MHA`` writes it: a transaction's temporary, then the rename."""
    like = _oblique_shell()
    values = np.random.default_rng(0).random(like.shape).astype(np.float32)
    plan = OutputPlan(inputs=[], overwrite=True)
    final = plan.add(tmp_path / "u.MHA", "--uncertainty", VOLUME_EXTENSIONS)
    with plan.transaction() as tx:
        write_scalar(like, values, tx.path(final))
    assert [p.name for p in tmp_path.iterdir()] == ["u.MHA"]
    assert np.array_equal(read_scalar(final)[0], values)


def test_mixed_case_nifti_name_is_refused_before_work(tmp_path):
    """NIfTI's library reads ".nii.gz" or ".NII.GZ" only; a ".nii.GZ" would be written but never read."""
    for name in ("a.nii.GZ", "a.Nii"):
        with pytest.raises(SkullVAEError, match="must end in"):
            OutputPlan().add(tmp_path / name, "--uncertainty", VOLUME_EXTENSIONS)
        with pytest.raises(SkullVAEError, match="mixed case"):
            write_mask(_oblique_shell(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_round_trip_nrrd_read_write_read_bit_for_bit(tmp_path):
    """NRRD stores spacing·direction: arbitrary doubles come back within an ulp; anything
    read from a NRRD file is written back so that it reads bit for bit (a fixed point)."""
    skull = _oblique_shell()
    write_mask(skull, tmp_path / "first.nrrd")
    first = read_skull(tmp_path / "first.nrrd")
    np.testing.assert_allclose(first.direction, skull.direction, rtol=0, atol=1e-15)
    np.testing.assert_allclose(first.spacing, skull.spacing, rtol=1e-15)
    assert np.array_equal(first.origin, skull.origin)
    write_mask(first, tmp_path / "second.nrrd")
    second = read_skull(tmp_path / "second.nrrd")
    assert second.same_geometry(first) and np.array_equal(second.mask, skull.mask)


@pytest.mark.parametrize("ext", ["nii", "nii.gz"])
def test_round_trip_nifti_float32_geometry(tmp_path, ext):
    """NIfTI stores geometry in float32: voxels exact, geometry to float32 precision."""
    skull = _oblique_shell()
    write_mask(skull, tmp_path / f"skull.{ext}")
    back = read_skull(tmp_path / f"skull.{ext}")
    assert np.array_equal(back.mask, skull.mask)
    np.testing.assert_allclose(back.origin, skull.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, skull.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.direction, skull.direction, atol=1e-6)


def test_written_mask_is_uint8_zero_one(tmp_path):
    skull = _oblique_shell()
    write_mask(skull, tmp_path / "m.nrrd")
    img = sitk.ReadImage(str(tmp_path / "m.nrrd"))
    assert img.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(img))) == {0, 1}


def test_scalar_round_trip(tmp_path):
    skull = _oblique_shell()
    values = np.random.default_rng(0).random(skull.shape, dtype=np.float32)
    write_scalar(skull, values, tmp_path / "u.mha")
    back, geometry = read_scalar(tmp_path / "u.mha")
    assert back.dtype == np.float32 and back.shape == skull.shape
    assert np.array_equal(back, values)
    assert geometry.same_geometry(skull) and not geometry.mask.any()


def test_a_label_map_is_read_by_its_chosen_labels_and_refused_without_them(tmp_path):
    """A label map of several values (a skull and a brain) read as a mask took the brain for bone too, and the brain
    closed a cranial hole ("no cranial defect found"): with none chosen it is refused in one line that lists them;
    chosen labels are the bone; ``kind="binary"`` keeps every nonzero voxel, as asked."""
    skull = _oblique_shell()
    labels = skull.mask.astype(np.int16) * 3
    labels[0, 0, 0] = 7
    _write_array(tmp_path / "labels.nii.gz", labels.transpose(2, 1, 0), skull)
    with pytest.raises(SkullVAEError, match=r"holds 2 values \(3, 7\): a label map\? .*--segment N") as err:
        read_skull(tmp_path / "labels.nii.gz")
    assert "\n" not in str(err.value) and "labels.nii.gz" in str(err.value)
    back = read_skull(tmp_path / "labels.nii.gz", labels=[3])
    assert back.metadata["kind"] == "binary" and np.array_equal(back.mask, skull.mask)
    assert read_skull(tmp_path / "labels.nii.gz", labels=[3, 7]).mask.sum() == skull.mask.sum() + 1
    assert read_skull(tmp_path / "labels.nii.gz", kind="binary").mask.sum() == skull.mask.sum() + 1
    with pytest.raises(SkullVAEError, match=r"no voxel has the label\(s\) \[4\] \(the volume holds 3, 7\)"):
        read_skull(tmp_path / "labels.nii.gz", labels=[4])
    with pytest.raises(SkullVAEError, match="a CT's bone is chosen by --hu-threshold"):
        read_skull(tmp_path / "labels.nii.gz", kind="ct", labels=[3])
    wide = (skull.mask.astype(np.uint32) * 70_000).transpose(2, 1, 0)  # labels over 255 read as a map when chosen
    _write_array(tmp_path / "wide.nrrd", wide, skull)
    assert np.array_equal(read_skull(tmp_path / "wide.nrrd", labels=[70_000]).mask, skull.mask)


def test_a_ct_threshold_is_compared_in_the_scans_own_values():
    """ITK's comparison cast 300 HU to a uint8 scan's type (44): a 0..255 scan read as a CT got bone at 44 and up."""
    from SkullVAELib.io.image import skull_from_image

    values = np.zeros((20, 20, 20), dtype=np.uint8)
    values[5:15, 5:15, 5:15] = 100
    values[8:12, 8:12, 8:12] = 250
    image = sitk.GetImageFromArray(values)
    with pytest.raises(SkullVAEError, match="empty mask: no bone voxels above 300 HU"):
        skull_from_image(image, "scan.nrrd", kind="ct")
    assert skull_from_image(image, "scan.nrrd", kind="ct", hu_threshold=200).mask.sum() == 4**3


def _ct_from(skull: SkullImage) -> np.ndarray:
    """HU volume (I, J, K): air -1000, the shell 1200 HU, a small detached 900 HU speck."""
    ct = np.full(skull.shape, -1000.0, dtype=np.float32)
    ct[skull.mask] = 1200.0
    ct[1:3, 1:3, 1:3] = 900.0  # bright but not connected to the skull: dropped
    ct[20, 18, 14] = 200.0  # soft tissue inside, below the threshold
    return ct


def test_ct_threshold_and_largest_component(tmp_path):
    skull = _oblique_shell()
    write_scalar(skull, _ct_from(skull), tmp_path / "ct.mha")
    back = read_skull(tmp_path / "ct.mha")
    assert back.metadata["kind"] == "ct" and back.metadata["hu_threshold"] == 300.0
    assert np.array_equal(back.mask, skull.mask)
    assert back.same_geometry(skull)
    # a threshold above the skull's HU leaves nothing
    with pytest.raises(SkullVAEError, match="empty mask") as err:
        read_skull(tmp_path / "ct.mha", kind="ct", hu_threshold=2000.0)
    assert "ct.mha" in str(err.value)


def test_forced_kind(tmp_path):
    skull = _oblique_shell()
    ct = _ct_from(skull)
    write_scalar(skull, ct, tmp_path / "ct.mha")
    with pytest.raises(SkullVAEError, match="all-bone"):  # forced binary: every nonzero HU is "bone"
        read_skull(tmp_path / "ct.mha", kind="binary")
    ct[ct < 0] = 0.0
    write_scalar(skull, ct, tmp_path / "ct_positive.mha")
    with pytest.raises(SkullVAEError, match="neither a binary mask .* nor a CT"):
        read_skull(tmp_path / "ct_positive.mha")
    assert read_skull(tmp_path / "ct_positive.mha", kind="ct").mask.sum() == skull.mask.sum()


@pytest.mark.skullfix
@pytest.mark.parametrize("case", ["000", "002"])  # 000 is oblique, 002 axis-aligned
def test_skullfix_round_trip(skullfix_dir, tmp_path, case):
    source = skullfix_dir / "complete_skull" / f"{case}.nrrd"
    skull = read_skull(source)
    write_mask(skull, tmp_path / f"{case}.nrrd")
    back = read_skull(tmp_path / f"{case}.nrrd")
    assert back.same_geometry(skull) and np.array_equal(back.mask, skull.mask)
    reference = sitk.ReadImage(str(source))
    assert back.origin.tolist() == list(reference.GetOrigin())
    assert back.direction.ravel().tolist() == list(reference.GetDirection())
    assert np.array_equal(back.mask, sitk.GetArrayViewFromImage(reference).transpose(2, 1, 0) != 0)


# --- bad input: each raises SkullVAEError naming the file ---------------------------------
def _expect_error(path, match: str, **kwargs) -> None:
    with pytest.raises(SkullVAEError, match=match) as err:
        read_skull(path, **kwargs)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.nrrd", "not found")
    with pytest.raises(SkullVAEError, match="not found"):
        read_scalar(tmp_path / "nope.nrrd")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "garbage.nrrd"
    bad.write_bytes(b"this is not an image\x00\x01")
    _expect_error(bad, "cannot read")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkUInt8), str(path))
    _expect_error(path, "2D image")


def test_single_slice_3d_is_2d(tmp_path):
    path = tmp_path / "one_slice.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, 1, sitk.sitkUInt8), str(path))
    _expect_error(path, "2D image")


def test_4d_image(tmp_path):
    path = tmp_path / "time.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkUInt8), str(path))
    _expect_error(path, "4D image")


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(path))
    _expect_error(path, "vector image")


def test_nan_values(tmp_path):
    values = np.zeros((8, 8, 8), dtype=np.float32)
    values[2:5, 2:5, 2:5] = 1
    values[0, 0, 0] = np.nan
    path = tmp_path / "nan.nrrd"
    _write_array(path, values)
    _expect_error(path, "NaN")


def test_empty_mask(tmp_path):
    path = tmp_path / "empty.nrrd"
    _write_array(path, np.zeros((8, 8, 8), dtype=np.uint8))
    _expect_error(path, "empty mask")


def test_all_bone_mask(tmp_path):
    path = tmp_path / "full.nrrd"
    _write_array(path, np.ones((8, 8, 8), dtype=np.uint8))
    _expect_error(path, "all-bone")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(SkullVAEError, match="cannot write") as err:
        write_mask(_oblique_shell(), tmp_path / "skull.unknownformat")
    assert "skull.unknownformat" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.float32])
def test_auto_kind_reads_labels_of_every_integer_type_and_refuses_negatives(tmp_path, dtype):
    """The one-pass label check (an unsigned view) agrees with min/max on every type; int8's -1 is not 255."""
    labels = np.zeros((12, 10, 8), dtype=dtype)
    labels[3:9, 3:7, 2:6] = 1
    labels[4, 4, 4] = 2 if np.dtype(dtype).itemsize == 1 else 255
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(labels.transpose(2, 1, 0)), str(path))
    with pytest.raises(SkullVAEError, match="holds 2 values"):  # read as a mask (a map of two labels), not a CT
        read_skull(path)
    assert read_skull(path, kind="binary").metadata["kind"] == "binary"
    labels[0, 0, 0] = -1 if np.dtype(dtype).kind in "if" else 256
    sitk.WriteImage(sitk.GetImageFromArray(labels.transpose(2, 1, 0)), str(path))
    with pytest.raises(SkullVAEError, match="neither a binary mask"):
        read_skull(path)


def test_physical_points_map_back_to_their_voxel_index():
    skull = _oblique_shell()
    index = np.array([[3.0, 7.0, 2.0], [10.5, 0.0, 4.25]])
    points = index @ skull.index_to_physical()[:3, :3].T + skull.origin
    np.testing.assert_allclose(skull.physical_to_index(points), index, atol=1e-9)
