"""The scanned grid's edge as the rays see it: where each ray leaves the scan, and which rays it cuts.

A gantry-tilted scan (an oblique direction) or a tight field of view can cut the skull: rays
then leave the scanned volume before they reach the bone. Such a ray is *unknown*, not open —
the skull may well be there, outside the scan — so a hole bounded by bone and by the scan's edge
is still a hole (:func:`rimholes.find_holes`). A hit ray whose bone reaches the edge is
*truncated*: its outer radius is the edge's, not the skull's, so it is no rim data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from SkullVAELib.implant import raycast
from SkullVAELib.io.image import SkullImage

_SQUARE = np.ones((3, 3), dtype=bool)
EXPECTED_NEIGHBOURS = 16  # hit rays whose largest outer radius is a miss ray's expected skull radius


@dataclass
class ScanEdge:
    """Where the rays leave the scanned grid.

    Attributes:
        exit_mm: float (Nα, Nβ) distance from the centre at which each ray leaves the grid.
        truncated: bool (Nα, Nβ) hit rays whose outermost bone reaches the scan's edge.
        unknown: bool (Nα, Nβ) miss rays that leave the scan before the skull's expected radius
            (+ ``edge_margin_mm``): bone may lie there, outside the scan.
        beyond: bool (Nα, Nβ) miss rays that leave it ``beyond_mm`` before: they fill nothing in the scan.
    """

    exit_mm: np.ndarray
    truncated: np.ndarray
    unknown: np.ndarray
    beyond: np.ndarray


#: rays more than this far below the horizontal point into the skull base, whose openings (the
#: foramen magnum, a scan cut off below the skull) stay open
SKULL_BASE_DEG = 30.0


def cell_solid_angle(step_deg: float) -> np.ndarray:
    """Solid angle (sr) of each grid row's cells, (Nα, 1)."""
    alpha, _ = raycast.angle_grid(step_deg)
    step = np.deg2rad(step_deg)
    return (np.sin(alpha) * step * step)[:, None]


def exit_radius(skull: SkullImage, centre: np.ndarray, step_deg: float) -> np.ndarray:
    """float32 (Nα, Nβ): distance (mm) from ``centre`` at which each ray leaves the grid's box
    (from the first to the last voxel centre: where :func:`raycast.cast`'s samples stop reading
    the mask); 0 where the centre lies outside it."""
    grid = raycast.grid_directions(step_deg)
    dirs = grid.reshape(-1, 3)
    affine = skull.index_to_physical()
    inv = np.linalg.inv(affine[:3, :3])
    start = inv @ (np.asarray(centre, dtype=np.float64) - affine[:3, 3])
    step = dirs @ inv.T  # index units per mm along each ray
    lo, hi = np.zeros(3), np.asarray(skull.shape, dtype=np.float64) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(step > 0, (hi - start) / step, np.where(step < 0, (lo - start) / step, np.inf))
    inside = np.all((start >= lo) & (start <= hi))
    return np.where(inside, bound.min(axis=1), 0.0).reshape(grid.shape[:2]).astype(np.float32)


def scan_edge(
    skull: SkullImage, raymap: raycast.RayMap, edge_margin_mm: float = 5.0, beyond_mm: float = 15.0
) -> ScanEdge:
    """Classify the rays by the scan's edge (:class:`ScanEdge`).

    A hit ray is *truncated* when its outermost bone lies within 1 mm of where it leaves the grid
    (the bone goes on beyond the scan). A miss ray's expected skull radius is the largest outer
    radius of the ``EXPECTED_NEIGHBOURS`` hit rays nearest to it in angle (on the sphere, so across
    the grid's poles) that are not truncated. Rays pointing down into the skull base (more than
    30° below the horizontal) are never unknown: the base's openings stay open.
    """
    exit_mm = exit_radius(skull, raymap.centre, raymap.step_deg)
    tol = 1.0  # mm: the last sample inside lies within one radial step of the exit (interpolated rays: more)
    truncated = raymap.hit & (exit_mm - np.nan_to_num(raymap.r_out) <= tol)
    usable = raymap.hit & ~truncated
    miss = ~raymap.hit
    if not usable.any() or not miss.any():
        none = np.zeros_like(miss)
        return ScanEdge(exit_mm, truncated, none, none.copy())
    dirs = raycast.grid_directions(raymap.step_deg)
    k = min(EXPECTED_NEIGHBOURS, int(usable.sum()))
    _, near = cKDTree(dirs[usable]).query(dirs[miss], k=k)
    expected = np.full(miss.shape, np.nan, dtype=np.float32)
    expected[miss] = raymap.r_out[usable][near.reshape(len(near), k)].max(axis=1)
    above_base = raymap.elevation() > -np.sin(np.deg2rad(SKULL_BASE_DEG))  # LPS's, in a turned grid too
    unknown = miss & above_base & (exit_mm < expected + edge_margin_mm)
    beyond = unknown & (exit_mm < expected - beyond_mm)
    return ScanEdge(exit_mm, truncated, unknown, beyond)


def openings(step_deg: float) -> dict[str, np.ndarray]:
    """The ray-grid cells (bool (Nα, Nβ) each) through which a gap of missing rays is open to the
    outside, by name: the downward sagittal seam (columns 0 and -1) where it points more than
    ``SKULL_BASE_DEG`` below the horizontal (a seam cell at α points α below it, backwards), and the
    anterior pole (row -1: the face's openings). The posterior pole (row 0) is the back of the vault."""
    alpha, beta = raycast.angle_grid(step_deg)
    base = np.zeros((len(alpha), len(beta)), dtype=bool)
    base[alpha >= np.deg2rad(SKULL_BASE_DEG), 0] = True
    base[:, -1] = base[:, 0]
    face = np.zeros_like(base)
    face[-1] = True
    return {"the skull base (rays downwards)": base, "the front of the head (the face)": face}


def miss_groups(miss: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels int (Nα, Nβ), count): 8-connected groups of ``miss`` (bool (Nα, Nβ)) on the grid, joined across
    its seam (columns -1 and 0 are neighbours on the sphere: a gap that crosses the downward sagittal line
    behind the head, where the seam is no opening, is one group, not two halves filled apart)."""
    labels, n = ndimage.label(miss, structure=_SQUARE)
    if n == 0:
        return labels, 0
    left = labels[:, 0]
    pairs = [
        (left[r], labels[r + dr, -1]) for r in np.flatnonzero(left) for dr in (-1, 0, 1) if 0 <= r + dr < len(left)
    ]
    pairs = np.array([pair for pair in pairs if pair[1]], dtype=np.intp).reshape(-1, 2)
    if not len(pairs):
        return labels, n
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n + 1, n + 1))
    count, joined = connected_components(graph, directed=False)  # node 0 (no miss) stays alone
    joined = joined - joined[0]  # the background's component is 0 ...
    joined[joined < 0] += count  # ... the others 1 … count - 1, in any order
    return joined[labels], count - 1


def why_no_hole(
    raymap: raycast.RayMap,
    edge: ScanEdge | None,
    min_hole_sr: float,
    opening_cells: dict[str, np.ndarray] | None = None,
) -> str:
    """One line: why :func:`find_holes` found no hole (the largest group of missing rays and where it opens;
    ``opening_cells``: those of a turned frame, default :func:`openings`)."""
    labels, n = miss_groups(~raymap.hit)
    omega = np.broadcast_to(cell_solid_angle(raymap.step_deg), labels.shape)
    sizes = ndimage.sum(omega, labels, index=np.arange(1, n + 1)) if n else np.zeros(0)
    if n == 0 or sizes.max() < min_hole_sr:
        return "the rim fit found no enclosed hole in the vault: every ray from the cranium meets bone"
    cells = labels == 1 + int(np.argmax(sizes))
    if edge is not None:
        cells = cells & ~edge.unknown
    where = [name for name, opening in (opening_cells or openings(raymap.step_deg)).items() if (cells & opening).any()]
    return (
        f"the rim fit found no enclosed hole in the vault: the largest opening ({sizes.max():.2f} sr) is open "
        f"to {' and '.join(where) or 'the outside'}; is the defect open to the skull base?"
    )
