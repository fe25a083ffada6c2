"""Metric definitions against hand-computed cases (DSC, HD95 pooled, bDSC)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from SkullVAELib.evaluation.metrics import (
    border_dice,
    bounding_box,
    dice,
    hd95,
    implant_metrics,
    surface,
    surface_distances,
)


def ball(shape, center, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` mm of ``center`` (mm)."""
    grid = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    return ((grid - np.asarray(center, float)[:, None, None, None]) ** 2).sum(0) <= radius**2


# --- DSC ---------------------------------------------------------------------------
def test_dice_simple_cases():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0  # both empty: perfect agreement by convention
    a[0, 0, :2] = True
    assert dice(a, b) == 0.0  # one empty
    b[0, 0, :2] = True
    assert dice(a, b) == 1.0
    b[0, 0, 2:4] = True  # |A|=2, |B|=4, |A∩B|=2 → 4/6
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, ~a) == 0.0
    soft = a.astype(np.float32) * 0.9  # probabilities: voxels above the threshold count
    assert dice(soft, b, threshold=0.5) == pytest.approx(dice(a, b))
    assert dice(soft, b, threshold=0.95) == 0.0


def test_dice_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))


# --- surface and bounding box -------------------------------------------------------
def test_surface_of_a_cube_is_its_shell():
    m = np.zeros((7, 7, 7), bool)
    m[1:6, 1:6, 1:6] = True  # 5³ cube, interior 3³
    s = surface(m)
    assert s.sum() == 5**3 - 3**3
    assert not s[3, 3, 3] and s[1, 3, 3]
    # a mask touching the array border: the border face is surface
    assert surface(np.ones((3, 3, 3), bool)).sum() == 26


def test_bounding_box_with_margin_is_clipped():
    m = np.zeros((10, 10, 10), bool)
    m[0, 4:6, 9] = True
    assert bounding_box(m, margin=2) == (slice(0, 3), slice(2, 8), slice(7, 10))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


# --- HD95 ---------------------------------------------------------------------------
def test_hd95_anisotropic_single_voxels_hand_computed():
    spacing = (1.0, 1.0, 2.5)
    a = np.zeros((9, 9, 9), bool)
    b = np.zeros((9, 9, 9), bool)
    a[4, 4, 3] = True
    b[4, 4, 5] = True  # two slices apart along k: 2 × 2.5 mm
    assert hd95(a, b, spacing) == pytest.approx(5.0)
    b[:] = False
    b[6, 4, 3] = True  # two voxels apart along i: 2 × 1 mm
    assert hd95(a, b, spacing) == pytest.approx(2.0)
    b[:] = False
    b[5, 5, 4] = True  # diagonal: sqrt(1 + 1 + 2.5²)
    assert hd95(a, b, spacing) == pytest.approx(math.sqrt(2 + 2.5**2))


@pytest.mark.parametrize("offset_mm", [3.0, 6.0])
def test_hd95_two_offset_spheres(offset_mm):
    """Sphere of radius r shifted by d: the distance from a surface point at polar
    cosine u to the other sphere is ≈ d·|u|, and |u| is uniform on [0, 1] over a sphere's
    surface (Archimedes), so the pooled 95th percentile is ≈ 0.95·d (max ≈ d)."""
    spacing = (1.0, 1.0, 1.0)
    shape = (48, 48, 48)
    a = ball(shape, (22, 24, 24), 14.0, spacing)
    b = ball(shape, (22 + offset_mm, 24, 24), 14.0, spacing)
    value = hd95(a, b, spacing)
    assert abs(value - 0.95 * offset_mm) <= 1.0  # within a voxel
    assert abs(value - offset_mm) <= 1.0
    assert hd95(a, a, spacing) == 0.0


def test_hd95_offset_spheres_anisotropic_spacing():
    """Same physical spheres sampled at 1×1×2 mm: the result stays in millimetres."""
    spacing = (1.0, 1.0, 2.0)
    shape = (48, 48, 24)
    a = ball(shape, (24, 24, 24), 14.0, spacing)
    b = ball(shape, (24, 24, 30), 14.0, spacing)  # 6 mm = 3 slices along k
    value = hd95(a, b, spacing)
    assert abs(value - 0.95 * 6.0) <= 2.0  # within one (2 mm) voxel along k
    assert value > 3.0  # would be ≈ 3 if spacing were ignored


def test_hd95_empty_conventions():
    e = np.zeros((5, 5, 5), bool)
    m = e.copy()
    m[2, 2, 2] = True
    assert hd95(e, e) == 0.0
    assert hd95(m, e) == math.inf
    assert hd95(e, m) == math.inf
    d_ab, d_ba = surface_distances(m, e)
    assert d_ab.tolist() == [math.inf] and d_ba.size == 0


def test_hd95_is_pooled_not_monai_max_of_one_way():
    """Asymmetric case: gt = pred's sphere + a small far blob. The blob's 98 surface
    voxels are 9 % of gt's surface (so gt→pred's 95th percentile is far) but under 5 %
    of the pooled surfaces (so the pooled 95th percentile is 0). MONAI reports the former."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    shape = (48, 48, 48)
    pred = ball(shape, (20, 24, 24), 10.0)
    gt = pred.copy()
    gt[38:43, 22:27, 22:27] = True  # 5³ cube, 8 voxels beyond the sphere
    d_pg, d_gp = surface_distances(pred, gt)
    blob = 5**3 - 3**3
    assert blob / d_gp.size > 0.05 and blob / (d_pg.size + d_gp.size) < 0.05
    ours = hd95(pred, gt)
    expected = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    assert ours == pytest.approx(expected) == 0.0

    def t(x):
        return torch.from_numpy(x[None, None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        monai_value = compute_hausdorff_distance(t(pred), t(gt), include_background=True, percentile=95).item()
    assert monai_value == pytest.approx(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)), abs=1e-4)
    assert monai_value > 8.0 > ours


# --- bDSC ---------------------------------------------------------------------------
def _slab_case():
    shape = (30, 30, 40)
    defective = np.zeros(shape, bool)
    defective[:, :, 0:5] = True  # bone: slices 0..4
    gt = np.zeros(shape, bool)
    gt[10:20, 10:20, 5:30] = True  # implant: slices 5..29, 25 slices
    return defective, gt


def test_border_dice_hand_computed_isotropic():
    defective, gt = _slab_case()
    # 10 mm from bone at slice 4 → slices 5..14 are in the border region (10 slices)
    pred = np.zeros_like(gt)
    pred[10:20, 10:20, 5:15] = True  # exactly the rim part of gt
    assert dice(pred, gt) == pytest.approx(2 * 10 / (10 + 25))
    assert border_dice(pred, gt, defective, (1, 1, 1)) == pytest.approx(1.0)
    pred[:] = False
    pred[10:20, 10:20, 5:10] = True  # half of the rim
    assert border_dice(pred, gt, defective, (1, 1, 1)) == pytest.approx(2 * 5 / (5 + 10))
    # far-away errors do not count
    pred[10:20, 10:20, 20:30] = True
    assert border_dice(pred, gt, defective, (1, 1, 1)) == pytest.approx(2 * 5 / (5 + 10))


def test_border_dice_anisotropic_and_distance_argument():
    defective, gt = _slab_case()
    pred = np.zeros_like(gt)
    pred[10:20, 10:20, 5:10] = True
    # 2 mm slices: 10 mm reaches slices 5..9 only → pred equals gt there
    assert border_dice(pred, gt, defective, (1, 1, 2)) == pytest.approx(1.0)
    # 20 mm at 1 mm slices: slices 5..24 (20) of gt vs 5 of pred
    assert border_dice(pred, gt, defective, (1, 1, 1), distance_mm=20) == pytest.approx(2 * 5 / 25)


def test_border_dice_no_bone_and_metrics_dict():
    defective, gt = _slab_case()
    empty = np.zeros_like(defective)
    assert border_dice(gt, gt, empty, (1, 1, 1)) == 1.0  # nothing in the border: both zeroed
    out = implant_metrics(gt, gt, defective, (1, 1, 1))
    assert out == {"dsc": 1.0, "bdsc": 1.0, "hd95": 0.0}


@pytest.mark.parametrize("order", ["C", "F"])
def test_bounding_box_is_the_same_in_either_memory_order_and_on_views(order):
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.zeros((9, 7, 5), dtype=bool, order=order)
        m[tuple(rng.integers(0, n, size=3) for n in m.shape)] = True
        expected = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(m))
        assert bounding_box(m) == expected
        assert bounding_box(m.transpose(2, 0, 1)) == tuple(expected[a] for a in (2, 0, 1))
        view = m[::2, :, 1:]  # a strided view
        if view.any():
            assert bounding_box(view) == tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(view))
    assert bounding_box(np.array([False, True, True, False])) == (slice(1, 3),)
