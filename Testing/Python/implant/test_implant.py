"""Implant extraction: box upsampling, island removal, contact rule, disjointness."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.data.grid import from_model_grid
from SkullVAELib.implant import cleanup as ops
from SkullVAELib.io.image import SkullImage


def _like(shape, spacing=(1.0, 1.0, 1.0)) -> SkullImage:
    return SkullImage(np.zeros(shape, dtype=bool), origin=(0, 0, 0), spacing=spacing)


@pytest.mark.parametrize("shape", [(40, 33, 20), (17, 64, 9)])
def test_upsample_box_equals_a_crop_of_from_model_grid(shape):
    rng = np.random.default_rng(0)
    prob = rng.random((8, 16, 6), dtype=np.float32)
    full = from_model_grid(prob, _like(shape))
    box = (slice(3, shape[0] - 2), slice(0, shape[1] // 2), slice(1, shape[2]))
    np.testing.assert_allclose(ops.upsample_box(prob, shape, box), full[box], atol=1e-5)


def test_remove_small_components_keeps_large_ones():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:8, 2:8, 2:8] = True  # 216 voxels
    mask[15, 15, 15] = True  # island of 1
    mask[12:14, 2:4, 2:4] = True  # 8 voxels
    out = ops.remove_small_components(mask, min_voxels=9)
    assert out[2:8, 2:8, 2:8].all() and not out[15, 15, 15] and not out[12:14, 2:4, 2:4].any()
    assert np.count_nonzero(out) == 216


def test_keep_major_components_drops_pieces_below_a_fraction_of_the_largest():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[2:12, 2:12, 2:12] = True  # 1000 voxels
    mask[20:25, 20:25, 20:25] = True  # 125 voxels: 12.5 % of the largest
    mask[20:24, 2:6, 2:6] = True  # 64 voxels: 6.4 %
    out = ops.keep_major_components(mask, fraction=0.1)
    assert np.count_nonzero(out) == 1125 and not out[20:24, 2:6, 2:6].any()
    assert np.count_nonzero(ops.keep_major_components(mask, fraction=1.0)) == 1000
    assert np.array_equal(ops.keep_major_components(mask, fraction=0.0), mask)
    assert not ops.keep_major_components(np.zeros_like(mask), 0.1).any()


def _plate_with_hole():
    """Input: a 4-voxel thick plate with a square hole; completion: the full plate + a floating blob."""
    shape = (40, 40, 30)
    full = np.zeros(shape, dtype=bool)
    full[4:36, 4:36, 10:14] = True
    defective = full.copy()
    defective[14:26, 14:26, 10:14] = False  # the defect (12×12×4 = 576 voxels)
    completed = full.copy()
    completed[18:24, 18:24, 22:28] = True  # a floating blob 8 voxels above the plate (216 voxels)
    completed[2, 2, 2] = True  # a tiny island
    return defective, completed, full


def test_model_grid_cleaning_keeps_the_plug_and_drops_floating_blobs():
    defective, completed, full = _plate_with_hole()
    kept = ops.clean_model_grid_implant(
        completed, defective.astype(np.float32), np.ones(3), min_island_mm3=50.0, max_distance_mm=3.0
    )
    plug = full & ~defective
    assert kept[plug].mean() > 0.95  # only the 8 corner voxels may go (restored at full resolution)
    assert not kept[18:24, 18:24, 22:28].any()  # 8 mm from the input bone > 3 mm: dropped
    assert not kept[2, 2, 2]
    assert not (kept & defective).any()
    # a generous contact distance keeps the blob (it is big enough)
    kept_far = ops.clean_model_grid_implant(
        completed, defective.astype(np.float32), np.ones(3), min_island_mm3=50.0, max_distance_mm=20.0
    )
    assert kept_far[19:23, 19:23, 23:27].all()  # its core (shell removal rounds its edges)


def test_implant_at_original_resolution_is_disjoint_from_the_input():
    defective_m, completed_m, full_m = _plate_with_hole()
    prob = np.where(completed_m, 0.9, 0.1).astype(np.float32)
    region = ops.clean_model_grid_implant(completed_m, defective_m.astype(np.float32), np.full(3, 2.0), 10.0, 3.0)
    # original grid: twice as fine; defective = nearest upsampling of the model-grid input
    up = np.kron(defective_m, np.ones((2, 2, 2), dtype=bool)).astype(bool)
    skull = SkullImage(up, origin=(0, 0, 0), spacing=(1.0, 1.0, 1.0))
    implant = ops.implant_at_original(prob, skull, region, threshold=0.5, min_island_mm3=10.0)
    assert not (implant & skull.mask).any()
    plug = np.kron(full_m & ~defective_m, np.ones((2, 2, 2), dtype=bool)).astype(bool)
    dice = 2 * np.count_nonzero(implant & plug) / (np.count_nonzero(implant) + np.count_nonzero(plug))
    assert dice > 0.85
    assert not implant[36:48, 36:48, 44:56].any()  # the floating blob stays out


def test_thin_shell_removal_keeps_two_voxel_plates_and_drops_one_voxel_shells():
    mask = np.zeros((30, 30, 20), dtype=bool)
    mask[5:25, 5:25, 4:6] = True  # a plate two voxels thick
    mask[5:25, 5:25, 12] = True  # a one-voxel shell
    out = ops.remove_thin_shells(mask)
    assert out[5:25, 5:25, 4:6].sum() == 2 * 20 * 20 - 8  # all but its 8 corner voxels
    assert not out[:, :, 12].any()


def test_only_what_the_latent_shift_adds_is_implant():
    """A piece the reconstruction decode(μ) has too (not added by γ·DEV) is not implant."""
    defective, completed, full = _plate_with_hole()
    plug = full & ~defective
    generous = dict(min_island_mm3=50.0, max_distance_mm=20.0)
    occupancy = defective.astype(np.float32)
    both = ops.clean_model_grid_implant(completed, occupancy, np.ones(3), **generous)
    assert both[plug].mean() > 0.95 and both[19:23, 19:23, 23:27].all()  # plug and blob kept
    added = plug.copy()  # the shift filled the hole; the blob was in the reconstruction already
    kept = ops.clean_model_grid_implant(completed, occupancy, np.ones(3), **generous, shift_added=added)
    assert kept[plug].mean() > 0.95
    assert not kept[19:23, 19:23, 23:27].any()
    # a shift that adds (almost) nothing does not filter: a collapsed latent space keeps the old rule
    tiny = np.zeros_like(added)
    tiny[0, 0, 0] = True
    same = ops.clean_model_grid_implant(completed, occupancy, np.ones(3), **generous, shift_added=tiny)
    assert np.array_equal(same, both)
