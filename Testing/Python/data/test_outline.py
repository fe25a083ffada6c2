"""The irregular cranial outline (SkullVAELib.data.outline): not a box, one formula in numpy and torch,
and the "irregular" style drawn by make-defects (numpy) and by the torch regions alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull, Delaunay

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.outline import draw_outline, irregular_inside
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.data.recipes import CRANIAL, CRANIAL_STYLES
from SkullVAELib.data.regions import cranial_region

GRID = np.arange(-100.0, 100.0, 1.0, dtype=np.float32)  # mm: wider than any outline (≤ 1.5 R √1.6, R ≤ 42 mm)


def _plane(seed: int) -> np.ndarray:
    """One outline of ``CRANIAL`` drawn with ``seed``, in the tangent plane (d = 0), 1 mm cells."""
    rng = np.random.default_rng(seed)
    outline = draw_outline(lambda low, high: float(rng.uniform(low, high)), CRANIAL)
    a, b = np.meshgrid(GRID, GRID, indexing="ij")
    return irregular_inside(a, b, np.zeros_like(a), outline, CRANIAL, np)


def _hull_fraction(mask: np.ndarray) -> float:
    """The outline's area over its convex hull's (cells whose centres lie in the hull of the inside cells)."""
    inside = np.argwhere(mask)
    hull = Delaunay(inside[ConvexHull(inside).vertices])
    cells = np.argwhere(np.ones_like(mask))
    return float(mask.sum() / (hull.find_simplex(cells) >= 0).sum())


def test_irregular_is_a_style():
    assert "irregular" in CRANIAL_STYLES


def test_the_outline_is_not_a_box():
    """Area below the convex hull's: typically ≈ 0.9, a box or ellipse gives 1 (the hull of cell centres)."""
    fractions = [_hull_fraction(_plane(seed)) for seed in range(16)]
    assert np.median(fractions) < 0.95 and min(fractions) < 0.88, np.round(fractions, 3)
    box = (np.abs(GRID)[:, None] <= 30) & (np.abs(GRID)[None, :] <= 20)
    assert _hull_fraction(box) > 0.999  # the measure itself: a box fills its hull


def test_the_outline_size_is_the_recipes():
    areas = np.array([_plane(seed).sum() for seed in range(16)])  # mm² (1 mm cells)
    low, high = CRANIAL.outline_radius_mm
    assert (areas > 0.5 * np.pi * low**2).all() and (areas < 3.0 * np.pi * high**2).all()
    assert np.pi * low**2 < np.median(areas) < np.pi * high**2
    assert len({int(a) for a in areas}) == len(areas)  # every seed its own outline


def test_the_same_outline_cuts_the_same_points_in_numpy_and_torch():
    rng = np.random.default_rng(3)
    outline = draw_outline(lambda low, high: float(rng.uniform(low, high)), CRANIAL)
    a, b, d = np.meshgrid(GRID[::2], GRID[::2], np.arange(-40.0, 30.0, 5.0, dtype=np.float32), indexing="ij")
    by_numpy = irregular_inside(a, b, d, outline, CRANIAL, np)
    by_torch = irregular_inside(*(torch.from_numpy(x) for x in (a, b, d)), outline, CRANIAL, torch).numpy()
    assert by_numpy.any() and (~by_numpy).any()
    assert (by_numpy != by_torch).mean() < 1e-4  # equal up to float ties on the outline
    depth = d[by_numpy]
    assert depth.min() >= CRANIAL.cut_mm[0] and depth.max() <= CRANIAL.cut_mm[1]  # cut along the normal


@pytest.fixture(scope="module")
def skull():
    return make_phantom(11, shape=(64, 64, 48), spacing=None)  # 3.2 mm voxels


def _upper(skull, removed: np.ndarray) -> bool:
    """On the upper vault: the removed bone's mean above mid-height, its lowest voxel within 20 mm of it
    (a lobe of a low site may dip a little, as a SkullFix box's cylinder can)."""
    z = skull.origin[2] + skull.spacing[2] * np.arange(skull.shape[2])
    bone_z = z[np.nonzero(skull.mask.any(axis=(0, 1)))[0]]
    mid = 0.5 * (bone_z.min() + bone_z.max())
    cut_z = z[np.nonzero(removed)[2]]
    return bool(cut_z.mean() > mid and cut_z.min() >= mid - 20.0)


def test_the_torch_region_and_the_numpy_defect_agree_in_kind(skull):
    """Both cut a few per cent of the bone on the upper vault, seeded; their sizes match on average."""
    bone = torch.from_numpy(skull.mask)
    drawn, cut = [], []
    for seed in range(8):
        region = cranial_region(bone, skull.origin, skull.spacing, torch.Generator().manual_seed(seed), "irregular")
        again = cranial_region(bone, skull.origin, skull.spacing, torch.Generator().manual_seed(seed), "irregular")
        assert torch.equal(region, again)
        removed = (region & bone).numpy()
        _, implant = cranial_defect(skull, seed, style="irregular")
        assert _upper(skull, removed) and _upper(skull, implant.mask), seed
        drawn.append(removed.sum() / skull.mask.sum())
        cut.append(implant.mask.sum() / skull.mask.sum())
    assert min(drawn) > 0.005 and min(cut) > 0.005 and max(drawn) < 0.35 and max(cut) < 0.35
    assert 0.5 < np.mean(drawn) / np.mean(cut) < 2.0, (np.round(drawn, 3), np.round(cut, 3))


def test_the_irregular_cut_differs_from_the_other_styles_at_one_site(skull):
    """The same seed draws the same vault site in every style (the site comes first): only the shape differs."""
    implants = {style: cranial_defect(skull, 4, style=style)[1].mask for style in CRANIAL_STYLES}
    assert not np.array_equal(implants["irregular"], implants["skullfix"])
    assert not np.array_equal(implants["irregular"], implants["skullbreak"])
    centres = {style: np.argwhere(mask).mean(axis=0) for style, mask in implants.items()}
    assert np.linalg.norm(centres["irregular"] - centres["skullbreak"]) * 3.2 < 30.0  # mm
