"""A CT's bone (`io/ct_bone.py`): a diploë under the threshold is read at 150 HU; a solid or thin skull, a scan not in
HU, is not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SkullVAELib.io.ct_bone import bone_of_ct, surface_voxels
from SkullVAELib.io.image import skull_from_image

SPACING = 0.8  # mm


def _vault_ct(diploe_hu, outer_mm=30.0, thickness_mm=6.0, table_mm=1.6, noise_hu=0.0, offset=0):
    """(CT image (HU), the whole bone (K, J, I) bool): a spherical shell with a cap cut off its top (a hole),
    compact bone (1600 HU) ``table_mm`` deep from every face (the outer and inner tables, which meet at the cut
    wall) and the diploë between them at ``diploe_hu``; a soft-tissue head (40 HU) inside and under a 4 mm scalp,
    air outside; white noise of ``noise_hu``, every value + ``offset`` (a scan not in HU)."""
    n = int(2 * (outer_mm + 8) / SPACING)
    z, y, x = (np.indices((n, n, n)) - (n - 1) / 2) * SPACING
    r = np.sqrt(x**2 + y**2 + z**2)
    bone = (r <= outer_mm) & (r >= outer_mm - thickness_mm) & (z < 0.8 * outer_mm)
    ct = np.where(r <= outer_mm + 4.0, 40.0, -1000.0)
    depth = ndimage.distance_transform_edt(bone, sampling=SPACING)  # the tables meet at the cut wall
    ct[bone] = np.where(depth[bone] <= table_mm, 1600.0, diploe_hu)
    ct += np.random.default_rng(0).normal(0.0, noise_hu, ct.shape) if noise_hu else 0.0
    image = sitk.GetImageFromArray((ct + offset).astype(np.int16))
    image.SetSpacing((SPACING,) * 3)
    return image, bone


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.mark.parametrize(("threshold", "noise_hu"), [(300.0, 0.0), (400.0, 0.0), (300.0, 50.0)])
def test_a_diploe_under_the_threshold_is_read_at_150_hu(threshold, noise_hu):
    """Whatever the threshold above it; with the soft tissue's noise too (the scan is smoothed first)."""
    image, bone = _vault_ct(diploe_hu=200.0, noise_hu=noise_hu)
    mask, read_at, notes = bone_of_ct(image, threshold, "scan.nrrd")
    assert read_at == 150.0
    assert _dice(mask, bone) > 0.97  # the whole bone, tables and diploë
    (note,) = notes
    assert "scan.nrrd" in note and f"hollow at {threshold:g} HU" in note and "read at 150 HU" in note


def test_the_hollow_reading_is_what_the_threshold_alone_gives_otherwise():
    image, bone = _vault_ct(diploe_hu=200.0)
    at_300 = sitk.GetArrayViewFromImage(image) >= 300
    assert at_300.sum() < 0.7 * bone.sum()  # the tables alone: what the reading gave before
    skull = skull_from_image(image, "scan.nrrd", kind="ct")
    assert skull.metadata["hu_threshold"] == 150.0
    assert any("reads hollow" in w for w in skull.metadata["warnings"])
    assert _dice(skull.mask.transpose(2, 1, 0), bone) > 0.97


@pytest.mark.parametrize("diploe_hu", [700.0, 1600.0])
def test_a_solid_skull_is_read_at_the_threshold(diploe_hu):
    image, bone = _vault_ct(diploe_hu)
    mask, read_at, notes = bone_of_ct(image, 300.0, "scan.nrrd")
    assert (read_at, notes) == (300.0, [])
    assert np.array_equal(mask, bone)


def test_a_thin_solid_skull_is_not_taken_for_a_hollow_one():
    """A 2.4 mm skull (three voxels: most of its voxels on a surface) of bone alone keeps its threshold: halving it
    changes nothing of its surface."""
    image, bone = _vault_ct(diploe_hu=1600.0, thickness_mm=2.4, table_mm=0.8)
    surface, total = surface_voxels(sitk.GetImageFromArray(bone.astype(np.uint8)))
    assert surface > 0.5 * total
    mask, read_at, notes = bone_of_ct(image, 300.0, "scan.nrrd")
    assert (read_at, notes) == (300.0, [])
    assert np.array_equal(mask, bone)


def test_a_threshold_at_150_hu_or_a_scan_not_in_hu_is_kept():
    image, _ = _vault_ct(diploe_hu=60.0)
    assert bone_of_ct(image, 150.0, "scan.nrrd")[1:] == (150.0, [])  # nothing under it to try
    shifted, _ = _vault_ct(diploe_hu=200.0, offset=1024)  # a scan stored with air at 0: 150 means nothing there
    assert bone_of_ct(shifted, 1324.0, "scan.nrrd")[1:] == (1324.0, [])


def test_a_blob_that_grows_at_half_the_threshold_is_not_hollow():
    """A bright core in a dimmer blob: at half the threshold the bone grows outwards, its surface with it."""
    values = np.zeros((20, 20, 20), np.int16) - 1000
    values[5:15, 5:15, 5:15] = 200
    values[8:12, 8:12, 8:12] = 1600
    mask, read_at, notes = bone_of_ct(sitk.GetImageFromArray(values), 300.0, "scan.nrrd")
    assert (read_at, notes, int(mask.sum())) == (300.0, [], 4**3)


def test_surface_voxels_are_those_with_a_background_face():
    cube = np.zeros((7, 7, 7), np.uint8)
    cube[2:5, 2:5, 2:5] = 1  # 27 voxels, the centre one alone enclosed
    assert surface_voxels(sitk.GetImageFromArray(cube)) == (26, 27)
    assert surface_voxels(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8))) == (0, 0)


@pytest.fixture(scope="module")
def phantom_defect():
    """A phantom skull at 1 mm with a SkullFix-style cranial defect: (defective skull, true implant)."""
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom

    return cranial_defect(make_phantom(3, (200, 200, 150), None), 1, style="skullfix")


def _phantom_ct(skull, diploe_hu: float) -> sitk.Image:
    """A CT of ``skull``'s bone: 1.5 mm of compact bone (1600 HU) at every face, the diploë at ``diploe_hu``."""
    depth = ndimage.distance_transform_edt(skull.mask, sampling=skull.spacing)
    ct = np.where(skull.mask, np.where(depth <= 1.5, 1600.0, diploe_hu), -1000.0)
    return skull.to_sitk(ct.astype(np.int16), np.int16)


def test_a_hollow_ct_gets_the_implant_of_a_solid_one(phantom_defect, monkeypatch):
    """The rim fit on a skull read hollow measured the outer table alone: the implant came out a table thin."""
    from SkullVAELib.evaluation.metrics import dice
    from SkullVAELib.io import ct_bone
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings

    defective, truth = phantom_defect[0], phantom_defect[1].mask
    completer = Completer(CompletionSettings())
    solid = completer.complete(skull_from_image(_phantom_ct(defective, 700.0), "ct.nrrd")).implant.mask
    hollow_ct = _phantom_ct(defective, 200.0)
    hollow = completer.complete(skull_from_image(hollow_ct, "ct.nrrd")).implant.mask
    assert dice(solid, truth) > 0.85
    assert dice(hollow, solid) > 0.98
    monkeypatch.setattr(ct_bone, "HOLLOW_SURFACE_SHARE", 2.0)  # the reading before: the tables alone
    tables = skull_from_image(hollow_ct, "ct.nrrd")
    rimfit = CompletionSettings().rimfit
    rimfit = dataclasses.replace(rimfit, config=dataclasses.replace(rimfit.config, join_hollow=False))
    before = Completer(CompletionSettings(rimfit=rimfit)).complete(tables).implant.mask
    assert dice(before, truth) < dice(solid, truth) - 0.2
    # where the CT reading is silent, the rim fit's own join of the tables (implant/hollow) takes most of it back
    assert dice(completer.complete(tables).implant.mask, truth) > dice(solid, truth) - 0.1
