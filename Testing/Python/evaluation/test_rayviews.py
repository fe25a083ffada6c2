"""Where a rim-fit implant's error lies, in ray space (``evaluation.rayviews``): every ray of the truth
lands in exactly one group, a truth the implant misses is told apart inside and outside the hole, and
the slice goes through the farthest error."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.rayviews import error_rays, error_summary, farthest_error, outer_radius_map, rays_of_mask
from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.io.image import SkullImage


@pytest.fixture(scope="module")
def fitted():
    """(defective, truth, rim-fit result) of a SkullBreak-style defect on a 2.2 mm phantom."""
    defective, implant = cranial_defect(make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2)), 1, style="skullbreak")
    return defective, implant.mask, rim_fit(defective)


def test_a_voxel_lands_on_the_ray_through_it():
    skull = SkullImage(np.zeros((41, 41, 41), dtype=bool), np.array([-20.0, -20.0, -20.0]), np.ones(3), np.eye(3))
    mask = np.zeros_like(skull.mask)
    mask[20, 20, 40] = True  # straight up (LPS +z) from the centre: β = 0, α = 90°
    rays = rays_of_mask(mask, skull, np.zeros(3), 1.0)
    assert rays.sum() == 1
    row, col = np.argwhere(rays)[0]
    alpha, beta = raycast.angle_grid(1.0)
    assert abs(np.rad2deg(alpha[row]) - 90.0) <= 0.5 and abs(np.rad2deg(beta[col])) <= 0.5
    assert not rays_of_mask(np.zeros_like(mask), skull, np.zeros(3), 1.0).any()


def test_every_ray_of_the_truth_falls_in_one_group(fitted):
    defective, truth, result = fitted
    groups = error_rays(result.raymap, result.holes, truth, result.implant, defective)
    on_truth = rays_of_mask(truth, defective, result.raymap.centre, result.raymap.step_deg)
    parts = [groups[name] for name in ("both", "truth in the hole", "truth outside the hole")]
    np.testing.assert_array_equal(np.logical_or.reduce(parts), on_truth)
    assert sum(p.astype(int) for p in parts).max() == 1
    assert not (groups["implant only"] & on_truth).any()
    assert groups["both"].sum() > 0.8 * on_truth.sum()  # the phantom's fill is good


def test_an_implant_too_thin_misses_truth_inside_the_hole(fitted):
    """Half of every ray's truth left out (the outer half): the hole's rays read as missed, not as both."""
    defective, truth, result = fitted
    index = np.argwhere(truth)
    affine = defective.index_to_physical()
    radius = np.linalg.norm(index @ affine[:3, :3].T + affine[:3, 3] - result.raymap.centre, axis=1)
    inner = np.zeros_like(truth)
    inner[tuple(index[radius < np.median(radius)].T)] = True
    groups = error_rays(result.raymap, result.holes, truth, inner, defective)
    assert groups["truth in the hole"].sum() > groups["both"].sum()
    assert groups["truth in the hole"].sum() > 5 * groups["truth outside the hole"].sum()


def test_an_implant_that_misses_its_hole_shows_as_truth_in_the_hole(fitted):
    defective, truth, result = fitted
    nothing = np.zeros_like(truth)
    groups = error_rays(result.raymap, result.holes, truth, nothing, defective)
    assert not groups["both"].any() and not groups["implant only"].any()
    assert groups["truth in the hole"].sum() > groups["truth outside the hole"].sum()
    summary = error_summary(groups, truth, nothing, defective.voxel_volume_mm3)
    assert summary["surplus_ml"] == 0.0
    assert summary["missed_ml"] == pytest.approx(truth.sum() * defective.voxel_volume_mm3 / 1000.0)
    assert summary["truth_rays_missed_in_hole"] + summary["truth_rays_outside_hole"] == pytest.approx(1.0)


def test_the_farthest_error_voxel():
    other = np.zeros((30, 30, 30), dtype=bool)
    other[:10] = True
    error = np.zeros_like(other)
    error[12, 5, 5] = error[25, 7, 8] = True
    voxel, mm = farthest_error(error, other, (1.0, 2.0, 2.0))
    assert voxel == (25, 7, 8) and mm == pytest.approx(16.0)
    assert farthest_error(np.zeros_like(error), other, (1.0, 1.0, 1.0)) == (None, 0.0)
    assert farthest_error(error, np.zeros_like(other), (1.0, 1.0, 1.0))[1] == float("inf")


def test_the_outer_radius_of_a_shell_per_ray():
    skull = SkullImage(np.zeros((61, 61, 61), dtype=bool), np.array([-30.0, -30.0, -30.0]), np.ones(3), np.eye(3))
    grid = np.stack(np.meshgrid(*[np.arange(61) - 30.0] * 3, indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    shell = (radius >= 20.0) & (radius <= 25.0)
    outer = outer_radius_map(shell, skull, np.zeros(3), 6.0)  # cells wider than the 1 mm voxels
    seen = np.isfinite(outer)
    assert seen[5:-5].all()  # every ray away from the poles (whose cells are narrower than a voxel)
    assert np.all(np.abs(outer[seen] - 25.0) <= 1.0)  # the outermost voxel centres lie within a voxel of 25 mm
    assert np.isnan(outer_radius_map(np.zeros_like(shell), skull, np.zeros(3), 6.0)).all()
