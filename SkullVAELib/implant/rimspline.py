"""Continuing the rim across a hole: where the rim fit's surface inside a defect comes from.

The rim rays' outer radius and bone thickness (mm, per direction) are carried across the hole by
thin-plate splines in a gnomonic (tangent-plane) projection about the hole's mean direction. With a
mirror cue the splines carry only what the mirrored skull does not explain: the outer radius's
residual always, the thickness's residual by the share :func:`mirror_thickness_weight` finds on the rim.
Used by :mod:`rimfit` (the fill) and :mod:`quality` (the outer surface's continuity across the rim).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import RBFInterpolator


def gnomonic(dirs: np.ndarray, centre_dir: np.ndarray) -> np.ndarray:
    """Tangent-plane coordinates (N, 2) of unit vectors ``dirs`` (N, 3) about ``centre_dir`` (3,)
    (all within 90° of it)."""
    helper = np.array([1.0, 0.0, 0.0]) if abs(centre_dir[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    t1 = np.cross(centre_dir, helper)
    t1 /= np.linalg.norm(t1)
    t2 = np.cross(centre_dir, t1)
    depth = np.maximum(dirs @ centre_dir, 1e-3)
    return np.c_[dirs @ t1 / depth, dirs @ t2 / depth]


def spline_points(rays: np.ndarray, most: int) -> np.ndarray:
    """Flat indices of the ``rays`` (bool (Nα, Nβ)), evenly thinned to at most ``most``: the points a
    thin-plate spline is fitted through (its solve is O(N³))."""
    idx = np.flatnonzero(rays)
    return idx[np.linspace(0, len(idx) - 1, most).astype(int)] if len(idx) > most else idx


def fit_rim_splines(
    xy_rim: np.ndarray,
    outer: np.ndarray,
    thick: np.ndarray,
    xy_fill: np.ndarray,
    smoothing: tuple[float, float],
    degree: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(outer radius, thickness) (M,) at ``xy_fill`` (M, 2) from thin-plate splines through their rim
    values (N,) at ``xy_rim`` (N, 2); ``smoothing`` and ``degree`` (the polynomial part) of the outer
    radius's spline and the thickness's. One interpolator with two value columns when both splines share
    their settings (the default): the kernel between the fill and rim points, most of the time, is built once."""
    kw = {"kernel": "thin_plate_spline", "smoothing": smoothing[0], "degree": degree[0]}
    if (smoothing[1], degree[1]) == (smoothing[0], degree[0]):
        both = RBFInterpolator(xy_rim, np.stack([outer, thick], axis=1), **kw)(xy_fill)
        return both[:, 0], both[:, 1]
    kw_thick = {**kw, "smoothing": smoothing[1], "degree": degree[1]}
    return RBFInterpolator(xy_rim, outer, **kw)(xy_fill), RBFInterpolator(xy_rim, thick, **kw_thick)(xy_fill)


def mirror_thickness_weight(thick: np.ndarray, mirrored: np.ndarray, fixed: float | None = None) -> float:
    """How much of the mirrored skull's bone thickness the fill follows, in [0, 1].

    ``thick`` and ``mirrored`` (N,) mm: the rim rays' thickness and the mirrored skull's on the same
    rays. ``fixed`` when given; otherwise the least-squares slope of the rim's thickness on the
    mirror's, clipped to [0, 1]. Where the mirror explains how the thickness varies around the rim it
    is followed into the hole; where it does not (a plane a little off, an asymmetric skull) the rim's
    own spline carries the thickness. Following it fully put implants' inner surfaces up to 3 mm off
    on validation (docs/results/issue-24-2026-12-03.md, "How much of the mirror's thickness")."""
    if fixed is not None:
        return float(fixed)
    ok = np.isfinite(thick) & np.isfinite(mirrored)
    centred = mirrored[ok] - mirrored[ok].mean()
    spread = float(centred @ centred)
    if spread <= 0.0:
        return 0.0
    return float(np.clip(centred @ (thick[ok] - thick[ok].mean()) / spread, 0.0, 1.0))
