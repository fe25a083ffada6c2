"""Spherical ray maps of a skull: outer and inner radius of its outermost bone layer per direction.

Rays leave a centre inside the cranium on a regular (α, β) grid of ``step_deg``:
α ∈ (0°, 180°) is the polar angle from the LPS +y axis (posterior), β ∈ (-180°, 180°) the
azimuth about it, β = 0 pointing superior (+z) and β = +90° pointing left (+x). The poles
sit on the front and back of the head, away from the vault where cranial defects are, and
the seam β = ±180° points down (the cranial base), so a vault hole never wraps around the
grid. Mirroring left-right (x → -x) is β → -β.

Rays are sampled in physical LPS space (mm) every ``RADIUS_STEP_MM`` on the mask at its
original resolution (nearest voxel, read in place in the mask's own memory order), so spacing
and oblique directions are honoured. Per ray, reading from the outside in: ``r_out`` = first
bone hit (mm from the centre), ``r_in`` = where that bone layer ends (the outermost layer's
inner surface). The sampling is vectorised: numpy on the CPU threads, skipping empty space
with a block occupancy (:mod:`raymarch`); or torch on a given device (CUDA), every sample.

Coarse to fine (opt-in, ``coarse_factor`` > 1, :mod:`coarse_to_fine`): a lattice of rays first, the full
step only around misses and sharp changes; off by default. Its interpolated rays' thicknesses are a
fraction of a voxel off the cast ones, which the rim fit's 0.5 mm thinning test on its rim
(``RimFitConfig.trim_mm``) can read: with it, implants of 0.97-0.99 DSC to every ray's (SkullFix 056,
060, 061); the same voxels without it (tested).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import numpy as np

from SkullVAELib.core.unchanged import fingerprint
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.coarse_to_fine import SHARP_MM, coarse_to_fine
from SkullVAELib.implant.raymarch import RayMarcher
from SkullVAELib.io.image import SkullImage

DEFAULT_STEP_DEG = 1.0
# The rim fit's step (and so a shape bank's): 1° → 0.75° lifted validation 056–063 by 0.011–0.013 DSC
# in each defect style (docs/results/issue-24-2026-12-05.md, "A finer ray grid for the rim fit").
RIM_STEP_DEG = 0.75
RADIUS_STEP_MM = 0.25  # sampling along a ray; finer than SkullFix voxels (0.4-0.6 mm)
MIN_RADIUS_MM = 15.0  # start of every ray (nothing of the vault is this close to the centre)


@dataclass
class RayMap:
    """Per-direction radii of the outermost bone layer.

    Attributes:
        centre: (3,) LPS mm, where every ray starts.
        step_deg: angular grid step.
        hit: bool (Nα, Nβ), the ray meets bone.
        r_out, r_in: float32 (Nα, Nβ) mm from the centre (NaN where there is no hit).
        exact: bool (Nα, Nβ) rays cast at the full step (elsewhere: interpolated from the coarse
            lattice, smooth bone only); None when every ray was cast.
        up: (3,) LPS superior (+z) in the frame the rays were cast in (not +z where the grid was turned off a
            pole, :mod:`gridturn`): what lies "below the horizontal" for the scan's edge and the self-check.
    """

    centre: np.ndarray
    step_deg: float
    hit: np.ndarray
    r_out: np.ndarray
    r_in: np.ndarray
    exact: np.ndarray | None = None
    up: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))

    def elevation(self) -> np.ndarray:
        """float (Nα, Nβ): the sine of each ray's elevation above the LPS horizontal (its direction · ``up``)."""
        return grid_directions(self.step_deg) @ np.asarray(self.up, dtype=np.float64)

    @property
    def thickness(self) -> np.ndarray:
        """Outer minus inner radius (mm), float32 (Nα, Nβ)."""
        return self.r_out - self.r_in


def angle_grid(step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre angles (radians): α (Nα,) in (0, π) and β (Nβ,) in (-π, π)."""
    step = np.deg2rad(step_deg)
    n_a, n_b = int(round(180.0 / step_deg)), int(round(360.0 / step_deg))
    return (np.arange(n_a) + 0.5) * step, -np.pi + (np.arange(n_b) + 0.5) * step


def directions(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) in LPS of angles α, β (broadcast together)."""
    alpha, beta = np.broadcast_arrays(alpha, beta)
    s = np.sin(alpha)
    return np.stack([s * np.sin(beta), np.cos(alpha), s * np.cos(beta)], axis=-1)


@functools.lru_cache(maxsize=8)
def grid_directions(step_deg: float) -> np.ndarray:
    """Read-only unit vectors (Nα, Nβ, 3) in LPS of the cell centres of :func:`angle_grid` (made once
    per step: every stage of a case asks for them)."""
    alpha, beta = angle_grid(step_deg)
    dirs = directions(alpha[:, None], beta[None, :])
    dirs.flags.writeable = False
    return dirs


def to_angles(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, α, β) of LPS vectors (..., 3) relative to a centre."""
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    r = np.sqrt(x * x + y * y + z * z)
    alpha = np.arccos(np.clip(y / np.maximum(r, 1e-9), -1.0, 1.0))
    return r, alpha, np.arctan2(x, z)


def grid_coordinates(alpha: np.ndarray, beta: np.ndarray, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (row, column) of angles on the grid (cell centres at integers)."""
    step = np.deg2rad(step_deg)
    return alpha / step - 0.5, (beta + np.pi) / step - 0.5


def nearest_cells(vectors: np.ndarray, step_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, length) of LPS ``vectors`` (N, 3): the nearest cell of the grid of ``step_deg`` in
    each vector's direction, and its length. Rows are clamped to the grid, columns wrap around the seam."""
    alpha, beta = angle_grid(step_deg)
    radius, a, b = to_angles(np.asarray(vectors, dtype=np.float64))
    row, col = grid_coordinates(a, b, step_deg)
    row = np.clip(np.rint(row).astype(np.intp), 0, len(alpha) - 1)
    return row, np.rint(col).astype(np.intp) % len(beta), radius


def voxel_cells(
    skull: SkullImage, index: np.ndarray, centre: np.ndarray, step_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, radius mm) of voxels ``index`` (int (N, 3) of ``skull``'s grid): the nearest cell of
    the grid of ``step_deg`` on the ray from ``centre`` (LPS mm) through each voxel's centre
    (:func:`nearest_cells`), and its distance from ``centre``."""
    affine = skull.index_to_physical()
    points = np.asarray(index, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]
    return nearest_cells(points - np.asarray(centre, dtype=np.float64), step_deg)


# The bone voxels of the last mask asked about, in C order of (i, j, k): cranial_centre, max_radius
# and the mirror plane all subsample them, and listing them costs ~1.4 s on a Fortran-ordered
# SkullFix mask (np.argwhere walks it against its memory order). Keyed on the array object (weak
# reference) and its fingerprint (core.unchanged: shape, strides, and the bone count or the hold
# under which the Completer keeps it read-only).
_bone_cache: dict = {}


def _bone_flat(mask: np.ndarray) -> np.ndarray:
    """Memory-order flat indices (int64) of ``mask``'s bone voxels, sorted in C order of (i, j, k)."""
    key = fingerprint(mask)
    ref = _bone_cache.get("mask")
    if ref is not None and ref() is mask and _bone_cache.get("key") == key:
        return _bone_cache["flat"]
    if mask.flags.c_contiguous:
        flat = np.flatnonzero(mask.ravel(order="K"))
    elif mask.flags.f_contiguous:  # memory order (k, j, i): stable radix sorts by j, then i
        flat = np.flatnonzero(mask.ravel(order="K"))
        n_i, n_j = mask.shape[0], mask.shape[1]
        small = np.uint16 if max(n_i, n_j) < 2**16 else np.int64
        i = (flat % n_i).astype(small)
        j = ((flat // n_i) % n_j).astype(small)
        order = np.argsort(j, kind="stable")
        order = order[np.argsort(i[order], kind="stable")]
        flat = flat[order]
    else:
        return np.ravel_multi_index(np.nonzero(mask), mask.shape)  # rare: no cache, C-order indices
    _bone_cache.clear()
    _bone_cache.update(mask=weakref.ref(mask, lambda _: _bone_cache.clear()), key=key, flat=flat)
    return flat


def bone_count(mask: np.ndarray) -> int:
    """The number of ``mask``'s bone voxels (from the cached listing: no pass when it is cached)."""
    return len(_bone_flat(mask))


def bone_points(skull: SkullImage, every: int = 1) -> np.ndarray:
    """LPS positions (N, 3) mm of every ``every``-th bone voxel (C order of (i, j, k))."""
    mask = skull.mask
    flat = _bone_flat(mask)[::every]
    order = "F" if mask.flags.f_contiguous and not mask.flags.c_contiguous else "C"
    i, j, k = (v.astype(np.float64) for v in np.unravel_index(flat, mask.shape, order=order))
    affine = skull.index_to_physical()  # element-wise: int64 @ float64 skips BLAS (0.26 s for 200k points)
    return np.stack([i * affine[a, 0] + j * affine[a, 1] + k * affine[a, 2] for a in range(3)], axis=1) + affine[:3, 3]


def _bone_derived(skull: SkullImage, name: str, compute):
    """``compute()``, a value of ``skull``'s bone listing and geometry, kept beside the listing's
    cache entry: the rim fit and the quality score ask for the same centre and radius."""
    flat = _bone_flat(skull.mask)
    if _bone_cache.get("flat") is not flat:  # an uncached (strided) mask
        return compute()
    memo = _bone_cache.setdefault("derived", {})
    key = (name, skull.index_to_physical().tobytes())
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def cranial_centre(skull: SkullImage) -> np.ndarray:
    """A point inside the cranium (LPS mm): least-squares sphere through the upper half's bone.

    The upper half (above mid-height in LPS z) is the vault, roughly a sphere; an algebraic
    sphere fit (|p|² = 2c·p + k) is robust to a missing piece of it (a defect). Computed once
    per mask and geometry (a copy is returned).
    """
    return _bone_derived(skull, "centre", lambda: _fit_cranial_centre(skull)).copy()


def _fit_cranial_centre(skull: SkullImage) -> np.ndarray:
    pts = bone_points(skull, every=max(bone_count(skull.mask) // 200_000, 1))
    z_lo, z_hi = pts[:, 2].min(), pts[:, 2].max()
    upper = pts[pts[:, 2] >= 0.5 * (z_lo + z_hi)]
    if len(upper) < 10:
        return pts.mean(axis=0)
    design = np.c_[2.0 * upper, np.ones(len(upper))]
    solution, *_ = np.linalg.lstsq(design, (upper**2).sum(axis=1), rcond=None)
    centre = solution[:3]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    if not np.all((centre > lo) & (centre < hi)):  # a degenerate fit: fall back to the box centre
        centre = 0.5 * (lo + hi)
    return centre


def _physical_to_index(skull: SkullImage) -> tuple[np.ndarray, np.ndarray]:
    """(M (3, 3), t (3,)) with index = M @ (p - t)."""
    affine = skull.index_to_physical()
    return np.linalg.inv(affine[:3, :3]), affine[:3, 3]


def max_radius(skull: SkullImage, centre: np.ndarray) -> float:
    """Distance (mm) from ``centre`` to the farthest bone voxel, plus one voxel diagonal (once per
    mask, geometry and centre)."""
    centre = np.asarray(centre, dtype=np.float64)
    return _bone_derived(skull, ("radius", centre.tobytes()), lambda: _farthest_bone(skull, centre))


def _farthest_bone(skull: SkullImage, centre: np.ndarray) -> float:
    pts = bone_points(skull, every=max(bone_count(skull.mask) // 200_000, 1))
    if len(pts) == 0:
        return MIN_RADIUS_MM
    return float(np.linalg.norm(pts - centre, axis=1).max() + 2.0 * np.linalg.norm(skull.spacing))


def mask_radius(skull: SkullImage, mask: np.ndarray, centre: np.ndarray) -> float:
    """A bound (mm) on the distance from ``centre`` to the farthest voxel of ``mask`` (bool (I, J, K)
    on ``skull``'s grid, e.g. an implant): :func:`box_radius` of its index box; 0 for an empty mask.
    A longer ray only meets more empty space, so the bound gives the same ray map as the exact distance."""
    box = bounding_box(mask)
    return 0.0 if box is None else box_radius(skull, box, centre)


def box_radius(skull: SkullImage, box: tuple[slice, ...], centre: np.ndarray) -> float:
    """The distance (mm) from ``centre`` to the farthest corner of the index ``box`` (three slices of
    ``skull``'s grid), plus two voxel diagonals as in :func:`max_radius`."""
    ends = [(b.start, b.stop - 1) for b in box]
    corners = np.array([[ends[a][bit] for a, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
    affine = skull.index_to_physical()
    points = corners @ affine[:3, :3].T + affine[:3, 3]
    return float(np.linalg.norm(points - centre, axis=1).max() + 2.0 * np.linalg.norm(skull.spacing))


def _marcher(skull: SkullImage, centre, transform, volume, device, radius_mm=None) -> tuple[RayMarcher, np.ndarray]:
    """(marcher, M) for rays from ``centre``: a direction u (LPS) has index-space step M @ u."""
    reach = max_radius(skull, centre) if radius_mm is None else float(radius_mm)
    radii = np.arange(MIN_RADIUS_MM, reach + RADIUS_STEP_MM, RADIUS_STEP_MM)
    inv, origin = _physical_to_index(skull)
    lin, off = (np.eye(3), np.zeros(3)) if transform is None else (transform[:3, :3], transform[:3, 3])
    # index = inv @ (T(centre + r·u) - origin): linear in r, so one start and one step per ray
    start = inv @ (lin @ centre + off - origin)
    array = skull.mask if volume is None else volume
    return RayMarcher(array, start, radii, MIN_RADIUS_MM, RADIUS_STEP_MM, device), inv @ lin


def _cast_rays(marcher: RayMarcher, to_index: np.ndarray, dirs: np.ndarray):
    """(hit bool (n,), r_out float32 (n,), r_in float32 (n,)) of unit LPS directions (n, 3)."""
    m = to_index
    step = np.stack([dirs[:, 0] * m[a, 0] + dirs[:, 1] * m[a, 1] + dirs[:, 2] * m[a, 2] for a in range(3)], 1)
    last, first = marcher.march(step.astype(np.float32))
    hit = last >= 0
    rr = marcher.radii
    r_out = np.where(hit, rr[np.maximum(last, 0)] + 0.5 * RADIUS_STEP_MM, np.nan).astype(np.float32)
    r_in = np.where(hit, rr[first] - 0.5 * RADIUS_STEP_MM, np.nan).astype(np.float32)
    return hit, r_out, r_in


def cast(
    skull: SkullImage,
    centre: np.ndarray | None = None,
    step_deg: float = DEFAULT_STEP_DEG,
    transform: np.ndarray | None = None,
    volume: np.ndarray | None = None,
    coarse_factor: int = 1,
    exact: np.ndarray | None = None,
    device=None,
    radius_mm: float | None = None,
    rays: np.ndarray | None = None,
) -> RayMap:
    """Cast rays from ``centre`` (default: :func:`cranial_centre`) through ``skull``'s bone.

    Args:
        transform: optional (4, 4) LPS affine applied to the sample points before reading the
            mask (e.g. a mirror: the map then describes the mirrored skull).
        volume: optional (I, J, K) mask to read instead of ``skull.mask`` (bool or 0/1 uint8,
            C- or Fortran-ordered; read in place).
        coarse_factor: 1 (default): cast every ray; > 1 (e.g. ``COARSE_FACTOR``): coarse to fine
            with that lattice step in grid cells (see the module docstring).
        exact: optional bool (Nα, Nβ) rays to cast at the full step in any case (e.g. another
            map's ``exact``, so that a mirror map is exact wherever the first one is).
        device: None: numpy, skipping empty space, on :func:`cpu_threads` threads (torch's
            ``get_num_threads()`` when torch is loaded); or a torch device ("cuda", "cpu"):
            every sample read by torch on it. All give the same map.
        radius_mm: how far the rays go (mm); default :func:`max_radius` of ``skull``'s bone (listing
            a new mask's bone costs ≈ 0.3 s on a SkullFix scan: pass a known bound instead).
        rays: optional bool (Nα, Nβ): only these rays (each as in a full cast); the others miss
            (``hit`` False, radii NaN). Coarse to fine still casts its whole lattice.
    """
    centre = cranial_centre(skull) if centre is None else np.asarray(centre, dtype=np.float64)
    marcher, to_index = _marcher(skull, centre, transform, volume, device, radius_mm)
    alpha, beta = angle_grid(step_deg)
    shape = (len(alpha), len(beta))
    if rays is not None and np.shape(rays) != shape:
        raise ValueError(f"rays must be a bool {shape} grid of step {step_deg:g}°, got shape {np.shape(rays)}")
    if coarse_factor <= 1:
        todo = np.ones(shape, dtype=bool) if rays is None else np.asarray(rays, dtype=bool)
        hit, r_out, r_in = np.zeros(shape, bool), np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
        hit[todo], r_out[todo], r_in[todo] = _cast_rays(marcher, to_index, grid_directions(float(step_deg))[todo])
        return RayMap(centre, float(step_deg), hit, r_out, r_in)
    sharp_mm = max(SHARP_MM, 2.0 * float(np.max(skull.spacing)))  # above the voxel quantisation
    hit, r_out, r_in, cast_exactly = coarse_to_fine(lambda a, b: _cast_rays(marcher, to_index, directions(a, b)),
                                                    alpha, beta, int(coarse_factor), exact, sharp_mm)  # fmt: skip
    if rays is not None:
        hit, r_out, r_in = hit & rays, np.where(rays, r_out, np.nan), np.where(rays, r_in, np.nan)
    return RayMap(centre, float(step_deg), hit, r_out, r_in, cast_exactly)
