"""Coarse-to-fine ray maps (:func:`raycast.cast` with ``coarse_factor`` > 1).

Every ``coarse_factor``-th ray in α and β is cast first; rays are then cast at the full step only where it matters: around every lattice cell
with a missing ray or a sharp radius change (a hole, its rim, a ledge), ``REFINE_MARGIN`` cells
wide, repeated until every miss and sharp change on the fine grid has that margin cast.
Elsewhere (smooth bone) the radii are interpolated bilinearly from the lattice;
``RayMap.exact`` tells which rays were cast. Within ``REFINE_MARGIN`` cells of a miss every value
is the full-step value, so the rim fit's implant is unchanged (tested on validation 056-063).
It is off by default: once empty space is skipped it saves only 0-18 % of a cast (SkullFix
056-062: 65-75 % of the rays still need the full step), while a reader of smooth bone far from
a miss (the implant quality score reads the completed skull's map over the implant) would see
interpolated radii.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

COARSE_FACTOR = 4  # coarse to fine's first pass: every 4th ray in α and β (4° at the default step)
REFINE_MARGIN = 16  # cells cast at the full step around a miss (the rim fit's ring reaches 12)
SHARP_MARGIN = 2  # ... and around a sharp radius change (a ledge, the skull base seen through a hole)
SHARP_MM = 2.0  # radius change between neighbouring rays (or lattice curvature) that is sharp (or 2 voxels)
MAX_REFINE_PASSES = 10


def coarse_to_fine(cast_rays, alpha, beta, factor: int, must: np.ndarray | None, sharp_mm: float):
    """(hit bool, r_out float32, r_in float32, exact bool), each (Nα, Nβ), on the full grid of the
    angles ``alpha`` (Nα,) and ``beta`` (Nβ,) (radians); ``cast_rays(α (n,), β (n,))`` gives (hit, r_out,
    r_in) of the rays it is asked for; ``must``: cells cast at the full step in any case."""
    shape = (len(alpha), len(beta))
    hit = np.zeros(shape, dtype=bool)
    r_out = np.full(shape, np.nan, dtype=np.float32)
    r_in = np.full(shape, np.nan, dtype=np.float32)
    done = np.zeros(shape, dtype=bool)

    def cast_cells(cells: np.ndarray) -> None:
        rows, cols = np.nonzero(cells & ~done)
        if rows.size:
            hit[rows, cols], r_out[rows, cols], r_in[rows, cols] = cast_rays(alpha[rows], beta[cols])
            done[rows, cols] = True

    node_rows = np.unique(np.r_[np.arange(0, shape[0], factor), shape[0] - 1])
    node_cols = np.arange(0, shape[1], factor)
    lattice = np.zeros(shape, dtype=bool)
    lattice[np.ix_(node_rows, node_cols)] = True
    cast_cells(lattice if must is None else lattice | must)
    need = _needed(*_coarse_flags(hit, r_out, r_in, node_rows, node_cols, sharp_mm))
    for _ in range(MAX_REFINE_PASSES):
        if not (need & ~done).any():
            break
        cast_cells(need)
        need = _needed(*_sharp_cells(hit, r_out, r_in, done, sharp_mm))
    else:
        cast_cells(need)
    _interpolate(hit, r_out, r_in, done, node_rows, node_cols)
    return hit, r_out, r_in, done


def _needed(miss: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """Cells to cast at the full step: ``REFINE_MARGIN`` around misses, ``SHARP_MARGIN`` around sharp changes."""
    return _dilate(miss, REFINE_MARGIN) | _dilate(sharp & ~miss, SHARP_MARGIN)


def _dilate(cells: np.ndarray, margin: int) -> np.ndarray:
    """Cells within ``margin`` (8-connected steps) of ``cells``; β wraps around, α does not."""
    return ndimage.maximum_filter(cells, size=2 * margin + 1, mode=("nearest", "wrap"))


def _coarse_flags(hit, r_out, r_in, node_rows, node_cols, sharp_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """bool (Nα, Nβ) twice: the fine cells of every lattice cell with a corner that misses, and of
    every one with a corner whose r_out or r_in has a sharp second difference along the lattice."""
    sub = np.ix_(node_rows, node_cols)
    miss = ~hit[sub]
    sharp = np.zeros_like(miss)
    for values in (r_out[sub], r_in[sub]):
        v = np.nan_to_num(values)
        d_cols = np.abs(np.roll(v, 1, axis=1) - 2.0 * v + np.roll(v, -1, axis=1))
        d_rows = np.zeros_like(v)
        d_rows[1:-1] = np.abs(v[:-2] - 2.0 * v[1:-1] + v[2:])
        sharp |= (d_cols > sharp_mm) | (d_rows > sharp_mm)
    p = np.clip(np.searchsorted(node_rows, np.arange(hit.shape[0]), side="right") - 1, 0, len(node_rows) - 2)
    q = np.searchsorted(node_cols, np.arange(hit.shape[1]), side="right") - 1
    out = []
    for flag in (miss, sharp):  # lattice cell (p, q) is flagged when a corner (p|p+1, q|q+1) is
        cell = flag[:-1] | flag[1:]
        cell = cell | np.roll(cell, -1, axis=1)
        out.append(cell[p[:, None], q[None, :]])
    return out[0], out[1]


def _sharp_cells(hit, r_out, r_in, done, sharp_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """bool (Nα, Nβ) twice: cast cells that miss, and cast cells that differ sharply (hit/miss,
    r_out, r_in) from a cast 8-neighbour."""
    flag = np.zeros_like(hit)
    for da, db in ((1, 0), (0, 1), (1, 1), (1, -1)):
        a_lo, a_hi = slice(0, hit.shape[0] - da), slice(da, hit.shape[0])

        def shifted(x, a_lo=a_lo, a_hi=a_hi, db=db):
            return x[a_lo], np.roll(x, -db, axis=1)[a_hi]

        (h0, h1), (d0, d1) = shifted(hit), shifted(done)
        (o0, o1), (i0, i1) = shifted(r_out), shifted(r_in)
        with np.errstate(invalid="ignore"):
            differ = (h0 != h1) | (np.abs(o0 - o1) > sharp_mm) | (np.abs(i0 - i1) > sharp_mm)
        both = d0 & d1 & differ
        flag[a_lo] |= both
        flag[a_hi] |= np.roll(both, db, axis=1)
    return done & ~hit, flag


def _interpolate(hit, r_out, r_in, done, node_rows, node_cols) -> None:
    """Fill the cells not cast (in place) bilinearly from the lattice (β periodic)."""
    rows, cols = np.nonzero(~done)
    if rows.size == 0:
        return
    n_b = hit.shape[1]
    p = np.clip(np.searchsorted(node_rows, rows, side="right") - 1, 0, len(node_rows) - 2)
    w = ((rows - node_rows[p]) / (node_rows[p + 1] - node_rows[p]))[:, None]
    q = np.searchsorted(node_cols, cols, side="right") - 1
    q_next = (q + 1) % len(node_cols)
    span = np.where(q + 1 < len(node_cols), node_cols[np.minimum(q + 1, len(node_cols) - 1)], n_b) - node_cols[q]
    v = ((cols - node_cols[q]) / span)[:, None]
    r0, r1 = node_rows[p], node_rows[p + 1]
    c0, c1 = node_cols[q], node_cols[q_next]
    for values in (r_out, r_in):
        corners = np.stack([values[r0, c0], values[r0, c1], values[r1, c0], values[r1, c1]], axis=1)
        weights = np.c_[(1 - w) * (1 - v), (1 - w) * v, w * (1 - v), w * v]
        values[rows, cols] = (corners * weights).sum(axis=1)
    hit[rows, cols] = True
