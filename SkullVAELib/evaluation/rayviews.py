"""Where a rim-fit implant's error lies, in the rim fit's own terms (numpy only; a script draws them).

The rim fit (:mod:`SkullVAELib.implant.rimfit`) works on rays from one centre, so its failures read
best in ray space: which rays hold the true implant, which the hole as the rays saw it, which the
implant. :func:`error_rays` sorts every ray into those groups; :func:`farthest_error` finds the voxel a
slice should go through (the missed or surplus voxel farthest from the other mask), and
:func:`error_summary` puts the numbers beside them; :func:`outer_radius_map` gives the outer
surface per ray, so the truth's and the implant's can be compared ray by ray. Used by ``benchmarks/rimfit_failure_view.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SkullVAELib.implant import raycast
from SkullVAELib.io.image import SkullImage

# ray groups of error_rays, in drawing order (a later group paints over an earlier one)
RAY_GROUPS = ("bone", "both", "truth in the hole", "truth outside the hole", "implant only")


def _cells_and_radii(mask: np.ndarray, skull: SkullImage, centre, step_deg: float):
    """((rows, columns) of the nearest ray cell, radius mm) of every voxel of ``mask``, and the grid's shape."""
    row, col, radius = raycast.voxel_cells(skull, np.argwhere(mask), centre, step_deg)
    alpha, beta = raycast.angle_grid(step_deg)
    return (row, col), radius, (len(alpha), len(beta))


def _voxels_per_ray(mask: np.ndarray, skull: SkullImage, centre, step_deg: float) -> np.ndarray:
    """int (Nα, Nβ): how many voxels of ``mask`` lie on each ray (nearest cell)."""
    cells, _, shape = _cells_and_radii(mask, skull, centre, step_deg)
    out = np.zeros(shape, dtype=np.int64)
    np.add.at(out, cells, 1)
    return out


def rays_of_mask(mask: np.ndarray, skull: SkullImage, centre: np.ndarray, step_deg: float) -> np.ndarray:
    """bool (Nα, Nβ): the rays of the grid of ``step_deg`` from ``centre`` (LPS mm) that pass through a
    voxel of ``mask`` (bool (I, J, K) on ``skull``'s grid; nearest cell of each voxel's centre)."""
    return _voxels_per_ray(mask, skull, centre, step_deg) > 0


def outer_radius_map(mask: np.ndarray, skull: SkullImage, centre: np.ndarray, step_deg: float) -> np.ndarray:
    """float (Nα, Nβ): per ray, the largest distance (mm) from ``centre`` of a voxel of ``mask`` on it
    (its outer surface as the ray sees it); NaN on rays without one."""
    cells, radius, shape = _cells_and_radii(mask, skull, centre, step_deg)
    out = np.full(shape, np.nan)
    np.fmax.at(out, cells, radius)
    return out


MISSED_SHARE = 0.25  # a ray of the truth counts as missed when the implant misses more of its voxels


def error_rays(raymap: raycast.RayMap, holes, truth: np.ndarray, implant: np.ndarray, skull: SkullImage) -> dict:
    """bool (Nα, Nβ) per group of :data:`RAY_GROUPS`, plus ``hole`` (the holes' rays as filled).

    A ray of the truth is *missed* when the implant misses more than :data:`MISSED_SHARE` of the
    truth's voxels on it (the whole ray, or the part of it the fill's radii leave out). ``bone``: the
    patient's bone met (``raymap.hit``); ``both``: rays of the truth that are not missed;
    ``truth in the hole``: missed rays of the hole (the fill's radii are off there, or it left the ray
    out); ``truth outside the hole``: missed rays that met bone (the hole the rays saw was smaller than
    the defect: other bone below it, a cut wall across the ray); ``implant only``: implant on rays
    without truth. Every ray of the truth lies in exactly one of the three. Args: ``raymap``, ``holes``
    of a :class:`RimFitResult`; ``truth``, ``implant`` bool (I, J, K) on ``skull``'s grid."""
    hole = np.zeros(raymap.hit.shape, dtype=bool)
    for h in holes:
        hole |= h.cells
    centre, step = raymap.centre, raymap.step_deg
    on_truth = _voxels_per_ray(truth, skull, centre, step)
    lost = _voxels_per_ray(truth & ~implant, skull, centre, step)
    on_implant = rays_of_mask(implant, skull, centre, step)
    missed = (on_truth > 0) & (lost > MISSED_SHARE * on_truth)
    return {
        "bone": raymap.hit.copy(),
        "both": (on_truth > 0) & ~missed,
        "truth in the hole": missed & hole,
        "truth outside the hole": missed & ~hole,
        "implant only": on_implant & (on_truth == 0),
        "hole": hole,
    }


def farthest_error(error: np.ndarray, other: np.ndarray, spacing) -> tuple[tuple[int, int, int] | None, float]:
    """(index, mm) of the ``error`` voxel (bool (I, J, K): missed or surplus) farthest from ``other``
    (the implant for a missed voxel, the truth for a surplus one); (None, 0.0) without error. An empty
    ``other`` puts every voxel infinitely far: the first error voxel, inf."""
    if not error.any():
        return None, 0.0
    if not other.any():
        return tuple(int(v) for v in np.argwhere(error)[0]), float("inf")
    distance = ndimage.distance_transform_edt(~other, sampling=np.asarray(spacing, dtype=np.float64))
    flat = int(np.argmax(np.where(error, distance, -1.0)))
    index = np.unravel_index(flat, error.shape)
    return tuple(int(v) for v in index), float(distance[index])


def error_summary(groups: dict, truth: np.ndarray, implant: np.ndarray, voxel_mm3: float) -> dict:
    """Numbers for a failing pair: missed and surplus volume (ml) and the share of the truth's rays in
    each group of :func:`error_rays`."""
    truth_rays = max(int((groups["both"] | groups["truth in the hole"] | groups["truth outside the hole"]).sum()), 1)
    return {
        "missed_ml": float(np.count_nonzero(truth & ~implant)) * voxel_mm3 / 1000.0,
        "surplus_ml": float(np.count_nonzero(implant & ~truth)) * voxel_mm3 / 1000.0,
        "truth_rays_missed_in_hole": float(groups["truth in the hole"].sum()) / truth_rays,
        "truth_rays_outside_hole": float(groups["truth outside the hole"].sum()) / truth_rays,
        "implant_only_rays": int(groups["implant only"].sum()),
    }
