"""Spherical ray maps of a skull: outer and inner radius of its outermost bone layer per direction.

Rays leave a centre inside the cranium on a regular (α, β) grid of ``step_deg``:
α ∈ (0°, 180°) is the polar angle from the LPS +y axis (posterior), β ∈ (-180°, 180°) the
azimuth about it, β = 0 pointing superior (+z) and β = +90° pointing left (+x). The poles
sit on the front and back of the head, away from the vault where cranial defects are, and
the seam β = ±180° points down (the cranial base), so a vault hole never wraps around the
grid. Mirroring left-right (x → -x) is β → -β.

Rays are sampled in physical LPS space (mm) with ``scipy.ndimage.map_coordinates`` on the
mask at its original resolution (nearest voxel), so spacing and oblique directions are
honoured. Per ray, reading from the outside in: ``r_out`` = first bone hit (mm from the
centre), ``r_in`` = where that bone layer ends (the outermost layer's inner surface).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SkullVAELib.io.image import SkullImage

DEFAULT_STEP_DEG = 1.0
RADIUS_STEP_MM = 0.25  # sampling along a ray; finer than SkullFix voxels (0.4-0.6 mm)
MIN_RADIUS_MM = 15.0  # start of every ray (nothing of the vault is this close to the centre)
CHUNK_RAYS = 4096  # rays sampled at once (memory: CHUNK_RAYS x samples x 3 float32)


@dataclass
class RayMap:
    """Per-direction radii of the outermost bone layer.

    Attributes:
        centre: (3,) LPS mm, where every ray starts.
        step_deg: angular grid step.
        hit: bool (Nα, Nβ), the ray meets bone.
        r_out, r_in: float32 (Nα, Nβ) mm from the centre (NaN where there is no hit).
    """

    centre: np.ndarray
    step_deg: float
    hit: np.ndarray
    r_out: np.ndarray
    r_in: np.ndarray

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


def bone_points(skull: SkullImage, every: int = 1) -> np.ndarray:
    """LPS positions (N, 3) mm of every ``every``-th bone voxel."""
    index = np.argwhere(skull.mask)[::every]
    affine = skull.index_to_physical()
    return index @ affine[:3, :3].T + affine[:3, 3]


def cranial_centre(skull: SkullImage) -> np.ndarray:
    """A point inside the cranium (LPS mm): least-squares sphere through the upper half's bone.

    The upper half (above mid-height in LPS z) is the vault, roughly a sphere; an algebraic
    sphere fit (|p|² = 2c·p + k) is robust to a missing piece of it (a defect).
    """
    pts = bone_points(skull, every=max(int(skull.mask.sum()) // 200_000, 1))
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
    """Distance (mm) from ``centre`` to the farthest bone voxel, plus one voxel diagonal."""
    pts = bone_points(skull, every=max(int(skull.mask.sum()) // 200_000, 1))
    if len(pts) == 0:
        return MIN_RADIUS_MM
    return float(np.linalg.norm(pts - centre, axis=1).max() + 2.0 * np.linalg.norm(skull.spacing))


def cast(
    skull: SkullImage,
    centre: np.ndarray | None = None,
    step_deg: float = DEFAULT_STEP_DEG,
    transform: np.ndarray | None = None,
    volume: np.ndarray | None = None,
) -> RayMap:
    """Cast rays from ``centre`` (default: :func:`cranial_centre`) through ``skull``'s bone.

    Args:
        transform: optional (4, 4) LPS affine applied to the sample points before reading the
            mask (e.g. a mirror: the map then describes the mirrored skull).
        volume: optional uint8 (I, J, K) copy of the mask (C-ordered) to reuse between calls.
    """
    centre = cranial_centre(skull) if centre is None else np.asarray(centre, dtype=np.float64)
    alpha, beta = angle_grid(step_deg)
    dirs = directions(alpha[:, None], beta[None, :]).reshape(-1, 3)
    radii = np.arange(MIN_RADIUS_MM, max_radius(skull, centre) + RADIUS_STEP_MM, RADIUS_STEP_MM)
    inv, origin = _physical_to_index(skull)
    if volume is None:
        volume = np.ascontiguousarray(skull.mask, dtype=np.uint8)
    # index = inv @ (T(centre + r·u) - origin): linear in r, so one start and one step per ray
    lin, off = (np.eye(3), np.zeros(3)) if transform is None else (transform[:3, :3], transform[:3, 3])
    start = (inv @ (lin @ centre + off - origin)).astype(np.float32)
    step = (dirs @ (inv @ lin).T).astype(np.float32)
    n, n_r = len(dirs), len(radii)
    hit = np.zeros(n, dtype=bool)
    r_out = np.full(n, np.nan, dtype=np.float32)
    r_in = np.full(n, np.nan, dtype=np.float32)
    rr = radii.astype(np.float32)
    for lo in range(0, n, CHUNK_RAYS):
        hi = min(lo + CHUNK_RAYS, n)
        coords = start[:, None, None] + step[lo:hi].T[:, :, None] * rr[None, None, :]  # (3, rays, n_r)
        samples = ndimage.map_coordinates(volume, coords.reshape(3, -1), order=0, mode="constant", cval=0)
        samples = samples.reshape(hi - lo, n_r).astype(bool)
        any_hit = samples.any(axis=1)
        last = n_r - 1 - np.argmax(samples[:, ::-1], axis=1)  # outermost bone sample
        gap = ~samples & (np.arange(n_r)[None, :] < last[:, None])
        has_gap = gap.any(axis=1)
        first_of_layer = np.where(has_gap, n_r - np.argmax(gap[:, ::-1], axis=1), 0)
        hit[lo:hi] = any_hit
        r_out[lo:hi] = np.where(any_hit, rr[last] + 0.5 * RADIUS_STEP_MM, np.nan)
        r_in[lo:hi] = np.where(any_hit, rr[first_of_layer] - 0.5 * RADIUS_STEP_MM, np.nan)
    shape = (len(alpha), len(beta))
    return RayMap(centre, float(step_deg), hit.reshape(shape), r_out.reshape(shape), r_in.reshape(shape))
