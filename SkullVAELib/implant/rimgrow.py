"""A hole's rim and how far a hole reaches (the rim fit's step 2b, :mod:`rimfit`).

The rim rays are a ring of hit rays some cells outside the hole: the data the fill's splines are
fitted to. A ray just outside the missing ones may still belong to the defect:
- it passed through the hole and met deeper bone (the skull base, an orbit roof): such rays join
  the hole (:func:`grow_hole`), so the rim moves out and the fill covers them;
- it met the defect's cut wall obliquely and holds only a wedge of the bone's thickness (a wall
  that is not radial from the ray centre; up to 5–7° from the hole): such rays stay in the fill's
  band but are no data for the thickness (:func:`whole_bone_rim`); ``RimFitConfig.grow_thick_mm``
  lets them join the hole instead (measured, not the default: docs/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage
from scipy.interpolate import RBFInterpolator

from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimspline import gnomonic, spline_points

_SQUARE = np.ones((3, 3), dtype=bool)


def _ring(cells: np.ndarray, inner: int, outer: int) -> np.ndarray:
    near = ndimage.binary_dilation(cells, _SQUARE, iterations=outer)
    return near & ~ndimage.binary_dilation(cells, _SQUARE, iterations=inner)


def rim_ring(raymap: raycast.RayMap, cells: np.ndarray, cfg: RimFitConfig) -> np.ndarray:
    """bool (Nα, Nβ): the hit rays ``cfg.ring`` cells out of ``cells`` (8-connected steps), the rim the fill reads."""
    return _ring(cells, cfg.ring[0], cfg.ring[1]) & raymap.hit


def rim_rays(
    raymap: raycast.RayMap, cells: np.ndarray, cfg: RimFitConfig, unusable: np.ndarray | None = None
) -> np.ndarray:
    """Ring cells used as rim data: hit rays ``cfg.ring`` cells out (not ``unusable``: bone cut by
    the scan's edge), outer-radius outliers removed."""
    ring = rim_ring(raymap, cells, cfg)
    if unusable is not None:
        ring &= ~unusable
    if ring.any():  # rim rays whose outer radius strays far from the rim's median met other bone
        ring &= np.abs(raymap.r_out - np.nanmedian(raymap.r_out[ring])) <= 20.0
    return ring


def grow_hole(raymap: raycast.RayMap, hole: Hole, cfg: RimFitConfig) -> Hole:
    """Add the rays next to the hole whose outermost bone lies ``grow_mm`` inside the surface fitted
    from the rim: the ray passed through the hole and met deeper bone (skull base, orbit roof).
    Such rays join when they connect to the hole (8-neighbours) through other such rays, within
    ``cfg.grow_reach`` cells of the hole as found: true ones lie 1-4 cells out, and without the
    limit the spline, refitted on a ring that moves out with the hole, can walk down a thin wall."""
    flat_dirs = raycast.grid_directions(raymap.step_deg).reshape(-1, 3)
    cells = hole.cells
    near_hole = ndimage.binary_dilation(cells, _SQUARE, iterations=cfg.grow_reach) & raymap.hit
    for _ in range(cfg.grow_iterations):
        ring = rim_rays(raymap, cells, cfg, hole.unusable)
        if ring.sum() < 10:
            break
        rim_idx = spline_points(ring, cfg.max_rim_points)
        near = near_hole & ~cells
        if not near.any():
            break
        # one spline for both columns: its outer radius decides; the thickness test is a setting (grow_thick_mm, off)
        kw = {"kernel": "thin_plate_spline", "smoothing": cfg.smoothing, "degree": cfg.degree}
        values = np.stack([raymap.r_out.ravel()[rim_idx], raymap.thickness.ravel()[rim_idx]], axis=1)
        spline = RBFInterpolator(gnomonic(flat_dirs[rim_idx], hole.direction), values, **kw)

        def deep(idx: np.ndarray, spline=spline) -> np.ndarray:
            fitted = spline(gnomonic(flat_dirs[idx], hole.direction))
            out = raymap.r_out.ravel()[idx] < fitted[:, 0] - cfg.grow_mm
            if cfg.grow_thick_mm > 0:
                out |= raymap.thickness.ravel()[idx] < fitted[:, 1] - cfg.grow_thick_mm
            return out

        grown = grow_connected(cells, near, deep)
        if grown.sum() == cells.sum():
            break
        cells = grown
    hole.cells = cells
    return hole


def grow_connected(cells: np.ndarray, allowed: np.ndarray, accept) -> np.ndarray:
    """``cells`` (bool (Nα, Nβ)) plus the ``allowed`` cells that ``accept(flat indices)`` takes and
    that connect to ``cells`` (8-neighbours, no wrap) through other taken cells.

    The same cells as taking every allowed cell ``accept`` takes and keeping the components that
    meet ``cells``, but ``accept`` (a spline evaluation) only sees the cells next to the growing
    set: the hole's border and the taken cells' neighbours, not the whole band around it.
    """
    grown = cells.copy()
    seen = np.zeros_like(cells)
    frontier = ndimage.binary_dilation(cells, _SQUARE) & allowed
    while frontier.any():
        idx = np.flatnonzero(frontier)
        seen.ravel()[idx] = True
        taken = idx[accept(idx)]
        if taken.size == 0:
            break
        new = np.zeros_like(cells)
        new.ravel()[taken] = True
        grown |= new
        frontier = ndimage.binary_dilation(new, _SQUARE) & allowed & ~seen
    return grown


def whole_bone_rim(raymap: raycast.RayMap, hole: Hole, ring: np.ndarray, cfg: RimFitConfig) -> np.ndarray:
    """``ring`` (bool (Nα, Nβ), :func:`rim_rays`) less the rays thinner by more than ``cfg.trim_mm`` (mm)
    than a spline of the bone's thickness on the ring as wide just outside it predicts (whole bone).

    A cut wall that is not radial from the ray centre thins the rays near it: they leave the bone
    through the wall before its inner surface (up to about 7° out on training 023's irregular defect).
    Their thickness would pull the fill's inner surface out by millimetres. The outer radius is no test:
    the vault's curvature between the far rim and the ring is larger than such a wall's step (a
    criterion on it dropped a whole side of training 010's rim). The far rim's spline has a linear
    polynomial part (it interpolates into the ring). Off when ``trim_mm`` is 0; the ring unchanged when
    fewer than 10 rays would be left, or when the far rim has fewer than 10."""
    if cfg.trim_mm <= 0:
        return ring
    width = cfg.ring[1] - cfg.ring[0]
    far = rim_rays(raymap, hole.cells, replace(cfg, ring=(cfg.ring[1], cfg.ring[1] + width)), hole.unusable)
    if far.sum() < 10:
        return ring
    idx = spline_points(far, cfg.max_rim_points)
    flat_dirs = raycast.grid_directions(raymap.step_deg).reshape(-1, 3)
    kw = {"kernel": "thin_plate_spline", "smoothing": cfg.thickness_smoothing, "degree": 1}
    thickness = raymap.thickness.ravel()
    spline = RBFInterpolator(gnomonic(flat_dirs[idx], hole.direction), thickness[idx].astype(np.float64), **kw)
    near = np.flatnonzero(ring)
    thin = thickness[near] < spline(gnomonic(flat_dirs[near], hole.direction)) - cfg.trim_mm
    out = ring.copy()
    out.ravel()[near[thin]] = False
    return out if out.sum() >= 10 else ring
