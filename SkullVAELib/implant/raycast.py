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
with a block occupancy (:class:`_Sampler`); or torch on a given device (CUDA), every sample.

Coarse to fine (``coarse_factor``): every ``coarse_factor``-th ray in α and β is cast first;
rays are then cast at the full step only where it matters: around every lattice cell with a
missing ray or a sharp radius change (a hole, its rim, a ledge), ``REFINE_MARGIN`` cells wide,
repeated until every miss and sharp change on the fine grid has that margin cast. Elsewhere
(smooth bone) the radii are interpolated bilinearly from the lattice; ``RayMap.exact`` tells
which rays were cast. Within ``REFINE_MARGIN`` cells of a hole every value is the full-step
value, so what the rim fit reads there (rim ring, hole growth) is unchanged.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SkullVAELib.io.image import SkullImage

DEFAULT_STEP_DEG = 1.0
RADIUS_STEP_MM = 0.25  # sampling along a ray; finer than SkullFix voxels (0.4-0.6 mm)
MIN_RADIUS_MM = 15.0  # start of every ray (nothing of the vault is this close to the centre)
COARSE_FACTOR = 4  # first pass: every 4th ray in α and β (4° at the default step)
REFINE_MARGIN = 16  # cells cast at the full step around a miss (the rim fit's ring reaches 12)
SHARP_MARGIN = 2  # ... and around a sharp radius change (a ledge, the skull base seen through a hole)
SHARP_MM = 2.0  # radius change between neighbouring rays (or lattice curvature) that is sharp (or 2 voxels)
MAX_REFINE_PASSES = 10
CHUNK_SAMPLES = 1 << 20  # samples per vectorised batch on the CPU (memory ~ 20 bytes each)
CHUNK_SAMPLES_CUDA = 1 << 24


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
    """

    centre: np.ndarray
    step_deg: float
    hit: np.ndarray
    r_out: np.ndarray
    r_in: np.ndarray
    exact: np.ndarray | None = None

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


# The bone voxels of the last mask asked about, in C order of (i, j, k): cranial_centre, max_radius
# and the mirror plane all subsample them, and listing them costs ~1.4 s on a Fortran-ordered
# SkullFix mask (np.argwhere walks it against its memory order). Keyed on the array object (weak
# reference), its shape, strides and bone count.
_bone_cache: dict = {}


def _bone_flat(mask: np.ndarray) -> np.ndarray:
    """Memory-order flat indices (int64) of ``mask``'s bone voxels, sorted in C order of (i, j, k)."""
    key = (mask.shape, mask.strides, int(np.count_nonzero(mask)))
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


def bone_points(skull: SkullImage, every: int = 1) -> np.ndarray:
    """LPS positions (N, 3) mm of every ``every``-th bone voxel (C order of (i, j, k))."""
    mask = skull.mask
    flat = _bone_flat(mask)[::every]
    order = "F" if mask.flags.f_contiguous and not mask.flags.c_contiguous else "C"
    i, j, k = (v.astype(np.float64) for v in np.unravel_index(flat, mask.shape, order=order))
    affine = skull.index_to_physical()  # element-wise: int64 @ float64 skips BLAS (0.26 s for 200k points)
    return np.stack([i * affine[a, 0] + j * affine[a, 1] + k * affine[a, 2] for a in range(3)], axis=1) + affine[:3, 3]


def cranial_centre(skull: SkullImage) -> np.ndarray:
    """A point inside the cranium (LPS mm): least-squares sphere through the upper half's bone.

    The upper half (above mid-height in LPS z) is the vault, roughly a sphere; an algebraic
    sphere fit (|p|² = 2c·p + k) is robust to a missing piece of it (a defect).
    """
    pts = bone_points(skull, every=max(int(np.count_nonzero(skull.mask)) // 200_000, 1))
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
    pts = bone_points(skull, every=max(int(np.count_nonzero(skull.mask)) // 200_000, 1))
    if len(pts) == 0:
        return MIN_RADIUS_MM
    return float(np.linalg.norm(pts - centre, axis=1).max() + 2.0 * np.linalg.norm(skull.spacing))


BLOCK = 4  # voxels per side of the occupancy blocks that let a ray skip empty space
WINDOW = 64  # samples (16 mm) read below a ray's outermost occupied block (then 32 at a time)
_ONE_BASED = np.arange(1, WINDOW + 1, dtype=np.int16)
_block_cache: dict = {}  # the last volume's block occupancy (both casts of a rim fit share it)


def _block_any(mem: np.ndarray) -> np.ndarray:
    """bool: any bone in each BLOCK³ block of a C-contiguous bool (n0, n1, n2) array (last blocks partial)."""
    n0, n1, n2 = mem.shape
    if n2 % BLOCK:
        mem = np.concatenate([mem, np.zeros((n0, n1, BLOCK - n2 % BLOCK), dtype=bool)], axis=2)
    blocks = np.ascontiguousarray(mem).view(np.uint32) != 0  # 4 bools of the fast axis at once
    for axis in (1, 0):
        n = blocks.shape[axis]
        if n % BLOCK:
            pad = list(blocks.shape)
            pad[axis] = BLOCK - n % BLOCK
            blocks = np.concatenate([blocks, np.zeros(pad, dtype=bool)], axis=axis)
        shape = list(blocks.shape)
        shape[axis : axis + 1] = [shape[axis] // BLOCK, BLOCK]
        blocks = blocks.reshape(shape).any(axis=axis + 1)
    return blocks


def _occupancy(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """(flat bool, element strides, dims) of the block occupancy of the bool mask ``arr`` (I, J, K),
    dilated by one block and padded by one block of False on every side; cached for the last array."""
    key = (arr.shape, arr.strides, int(np.count_nonzero(arr)))
    ref = _block_cache.get("array")
    if ref is not None and ref() is arr and _block_cache.get("key") == key:
        return _block_cache["value"]
    order = tuple(int(a) for a in np.argsort(arr.strides)[::-1])  # memory order, slowest axis first
    grown = np.pad(_block_any(arr.transpose(order)), 1)
    for axis in range(3):  # separable 3×3×3 dilation
        ahead, behind = [slice(None)] * 3, [slice(None)] * 3
        ahead[axis], behind[axis] = slice(1, None), slice(None, -1)
        source = grown.copy()
        grown[tuple(ahead)] |= source[tuple(behind)]
        grown[tuple(behind)] |= source[tuple(ahead)]
    logical = grown.transpose(np.argsort(order))  # back to (i, j, k) block axes
    value = (grown.ravel(), tuple(int(s) for s in logical.strides), tuple(int(n) for n in logical.shape))
    _block_cache.clear()
    _block_cache.update(array=weakref.ref(arr, lambda _: _block_cache.clear()), key=key, value=value)
    return value


def cpu_threads() -> int:
    """CPU threads of the ray casting: torch's when torch is loaded, else ``$SKULLVAE_THREADS``, else
    the CPU count."""
    if "torch" in sys.modules:
        return max(int(sys.modules["torch"].get_num_threads()), 1)
    try:
        return max(int(os.environ.get("SKULLVAE_THREADS", "")), 1)
    except ValueError:
        return os.cpu_count() or 1


class _Sampler:
    """Marches rays from one centre through one mask (read in place, any memory order).

    A ray with index-space start s and step u (per mm) reads voxel floor(s + u·r + 0.5) per axis
    at every radius r (float32 arithmetic, as ``scipy.ndimage.map_coordinates(order=0,
    mode="constant")`` does: no bone outside [0, n - 1]). On the CPU (numpy) a ray first reads a
    block occupancy (BLOCK³ voxels, dilated by one block) every few samples, and then the full
    samples only in a window below its outermost occupied block: every sample beyond that block
    is empty, so the result is the same as reading every sample; rays whose window holds no bone,
    or whose layer reaches the window's end, read every sample.
    """

    def __init__(self, skull, centre, transform, volume, device) -> None:
        arr = skull.mask if volume is None else np.asarray(volume)
        if arr.dtype != bool:
            arr = arr != 0
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr)
        self.array = arr
        self.volume = arr.ravel(order="K")  # no copy
        self.strides = tuple(int(s) // arr.itemsize for s in arr.strides)
        self.dims = tuple(int(n) for n in arr.shape)
        radii = np.arange(MIN_RADIUS_MM, max_radius(skull, centre) + RADIUS_STEP_MM, RADIUS_STEP_MM)
        self.radii = radii.astype(np.float32)
        inv, origin = _physical_to_index(skull)
        lin, off = (np.eye(3), np.zeros(3)) if transform is None else (transform[:3, :3], transform[:3, 3])
        # index = inv @ (T(centre + r·u) - origin): linear in r, so one start and one step per ray
        self.start = (inv @ (lin @ centre + off - origin)).astype(np.float32)
        self.dir_to_index = inv @ lin
        self.device = device
        self._torch_volume = None
        self._blocks = None

    @property
    def blocks(self) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
        """The mask's block occupancy (:func:`_occupancy`), built on first use."""
        if self._blocks is None:
            self._blocks = _occupancy(self.array)
        return self._blocks

    def cast(self, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hit bool (n,), r_out float32 (n,), r_in float32 (n,)) of unit LPS directions (n, 3)."""
        m = self.dir_to_index
        step = np.stack([dirs[:, 0] * m[a, 0] + dirs[:, 1] * m[a, 1] + dirs[:, 2] * m[a, 2] for a in range(3)], 1)
        step = step.astype(np.float32)
        last, first = self._march_torch(step) if self.device is not None else self._march_threads(step)
        hit = last >= 0
        rr = self.radii
        r_out = np.where(hit, rr[np.maximum(last, 0)] + 0.5 * RADIUS_STEP_MM, np.nan).astype(np.float32)
        r_in = np.where(hit, rr[first] - 0.5 * RADIUS_STEP_MM, np.nan).astype(np.float32)
        return hit, r_out, r_in

    def _flat_index(self, step, radii, dims, strides, block: int = 1):
        """(flat index, valid) of the voxels (or blocks of ``block`` voxels, padded by one) read at
        ``radii`` ((L,) or (n, L)) along the rays of index-space ``step`` (n, 3)."""
        index_type = np.int32 if self.volume.size < 2**31 else np.int64
        x = np.empty((len(step), radii.shape[-1]), dtype=np.float32)
        flat = np.zeros(x.shape, dtype=index_type)
        valid = np.ones(x.shape, dtype=bool)
        for a in range(3):
            np.multiply(step[:, a : a + 1], radii, out=x)
            x += self.start[a]
            if block == 1:
                valid &= x >= 0
                valid &= x <= dims[a] - 1
            x += 0.5
            np.floor(x, out=x)
            xi = x.astype(index_type)
            if block > 1:  # the voxel's block, + 1 for the padding
                xi //= block
                xi += 1
                valid &= (xi >= 0) & (xi < dims[a])
            xi *= strides[a]
            flat += xi
        flat *= valid
        return flat, valid

    def _march_threads(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_march_blocks` on ``cpu_threads()`` threads (numpy releases the GIL in its loops)."""
        threads = min(cpu_threads(), max(len(step) // 2048, 1))
        if threads <= 1:
            return self._march_blocks(step)
        _ = self.blocks  # built once, before the threads share it
        parts = np.array_split(np.arange(len(step)), threads)
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(lambda rays: self._march_blocks(step[rays]), parts))
        return np.concatenate([d[0] for d in done]), np.concatenate([d[1] for d in done])

    def _march_blocks(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(last, first) per ray: index of the outermost bone sample (-1: none) and of the first
        sample of its layer (0 when the layer reaches the first sample); see the class docstring."""
        n, n_r = len(step), len(self.radii)
        occupied, b_strides, b_dims = self.blocks
        # a sample lies within BLOCK voxels (per axis) of the voxel of the nearest coarse sample, so
        # in its block or a neighbour: the dilated occupancy never misses bone
        reach = float(np.abs(self.dir_to_index).sum(axis=1).max()) * RADIUS_STEP_MM  # voxels per sample
        half = int(max(1, min(8, int((BLOCK - 0.1) / reach))))  # coarse step 2·half samples
        coarse_radii = MIN_RADIUS_MM + RADIUS_STEP_MM * 2 * half * np.arange((n_r - 1 + half) // (2 * half) + 1)
        coarse_radii = coarse_radii.astype(np.float32)
        occupied_groups = np.empty((n, len(coarse_radii)), dtype=bool)  # group g: samples g·2h ± h
        chunk = max(CHUNK_SAMPLES // len(coarse_radii), 1)
        for lo in range(0, n, chunk):
            flat, valid = self._flat_index(step[lo : lo + chunk], coarse_radii, b_dims, b_strides, block=BLOCK)
            occupied_groups[lo : lo + chunk] = occupied[flat] & valid
        groups = np.arange(1, len(coarse_radii) + 1)
        last = np.full(n, -1, dtype=np.int64)
        first = np.zeros(n, dtype=np.int64)
        top = np.full(n, n_r - 1, dtype=np.int64)  # no bone above this sample
        todo = np.arange(n)
        while todo.size:  # the outermost occupied group at or below top, then a window of samples under it
            below = groups[None, :] <= ((top[todo] + half) // (2 * half) + 1)[:, None]
            g = (occupied_groups[todo] & below) * groups
            g = g.max(axis=1) - 1
            todo, g = todo[g >= 0], g[g >= 0]
            offset = np.minimum(g * 2 * half + half, top[todo]) - (WINDOW - 1)
            samples = self._window(step[todo], offset, WINDOW)
            outer = (samples * _ONE_BASED).max(axis=1)  # 1-based; 0: no bone in the window
            gap = ((~samples & (_ONE_BASED < outer[:, None])) * _ONE_BASED).max(axis=1)
            found = outer > 0
            last[todo[found]] = offset[found] + outer[found].astype(np.int64) - 1
            first[todo[found]] = offset[found] + gap[found]
            deeper = found & (gap == 0) & (offset > 0)  # the layer may go on below the window
            if deeper.any():
                self._layer_bottoms(step, todo[deeper], offset[deeper], first)
            top[todo] = offset - 1
            todo = todo[~found & (offset > 0)]
        return last, first

    def _layer_bottoms(self, step, rays, bottom, first) -> None:
        """Set ``first`` (in place) of ``rays`` whose outermost layer is bone down to ``bottom``."""
        length = WINDOW // 2
        while rays.size:
            start = bottom - length
            samples = self._window(step[rays], start, length)
            gap = (~samples * _ONE_BASED[:length]).max(axis=1)  # 1-based highest gap; 0: none
            first[rays] = np.where(gap > 0, start + gap, 0)
            more = (gap == 0) & (start > 0)
            rays, bottom = rays[more], start[more]

    def _window(self, step, offset, length) -> np.ndarray:
        """bool (n, length): bone at radius index ``offset`` (n,) + t along each ray (False outside
        0..n_r-1)."""
        n_r = len(self.radii)
        out = np.empty((len(step), length), dtype=bool)
        chunk = max(CHUNK_SAMPLES // length, 1)
        for lo in range(0, len(step), chunk):
            index = offset[lo : lo + chunk, None] + np.arange(length)
            inside = (index >= 0) & (index < n_r)
            flat, valid = self._flat_index(step[lo : lo + chunk], self.radii[np.clip(index, 0, n_r - 1)], self.dims,
                                           self.strides)  # fmt: skip
            samples = self.volume[flat]
            samples &= valid & inside
            out[lo : lo + chunk] = samples
        return out

    def _march(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(last, first) as :meth:`_march_blocks`, reading every sample (numpy; the reference)."""
        n, n_r = len(step), len(self.radii)
        chunk = max(CHUNK_SAMPLES // n_r, 1)
        one_based = np.arange(1, n_r + 1, dtype=np.int32 if n_r >= 2**15 else np.int16)
        last = np.empty(n, dtype=np.int64)
        first = np.empty(n, dtype=np.int64)
        for lo in range(0, n, chunk):
            flat, valid = self._flat_index(step[lo : lo + chunk], self.radii, self.dims, self.strides)
            samples = self.volume[flat]
            samples &= valid
            outer = (samples * one_based).max(axis=1)  # 1-based index of the outermost bone; 0: none
            gap = ~samples & (one_based < outer[:, None])
            last[lo : lo + chunk] = outer - 1
            first[lo : lo + chunk] = (gap * one_based).max(axis=1)  # 1 past the innermost gap
        return last, first

    def _march_torch(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every sample of every ray in torch (its CPU threads, or a GPU): (last, first) as
        :meth:`_march_blocks`."""
        import torch

        device = torch.device(self.device)
        if self._torch_volume is None:
            with warnings.catch_warnings():  # a read-only mask: torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                self._torch_volume = torch.from_numpy(self.volume).to(device)
        volume = self._torch_volume
        n, n_r = len(step), len(self.radii)
        chunk = max((CHUNK_SAMPLES_CUDA if device.type == "cuda" else CHUNK_SAMPLES) // n_r, 1)
        index_type = torch.int32 if volume.numel() < 2**31 else torch.int64
        radii = torch.from_numpy(self.radii).to(device)
        one_based = torch.arange(1, n_r + 1, dtype=torch.int32, device=device)
        steps = torch.from_numpy(step).to(device)
        last = torch.empty(n, dtype=torch.int32, device=device)
        first = torch.empty(n, dtype=torch.int32, device=device)
        for lo in range(0, n, chunk):
            s = steps[lo : lo + chunk]
            flat = torch.zeros((len(s), n_r), dtype=index_type, device=device)
            valid = torch.ones((len(s), n_r), dtype=torch.bool, device=device)
            for a in range(3):
                x = s[:, a : a + 1] * radii
                x += float(self.start[a])
                valid &= x >= 0
                valid &= x <= self.dims[a] - 1
                x += 0.5
                flat += x.floor_().to(index_type) * self.strides[a]
            flat *= valid
            samples = volume[flat]
            samples &= valid
            outer = (samples * one_based).amax(dim=1)
            gap = ~samples & (one_based < outer[:, None])
            last[lo : lo + len(s)] = outer - 1
            first[lo : lo + len(s)] = (gap * one_based).amax(dim=1)
        return last.cpu().numpy(), first.cpu().numpy()


def cast(
    skull: SkullImage,
    centre: np.ndarray | None = None,
    step_deg: float = DEFAULT_STEP_DEG,
    transform: np.ndarray | None = None,
    volume: np.ndarray | None = None,
    coarse_factor: int = COARSE_FACTOR,
    exact: np.ndarray | None = None,
    device=None,
) -> RayMap:
    """Cast rays from ``centre`` (default: :func:`cranial_centre`) through ``skull``'s bone.

    Args:
        transform: optional (4, 4) LPS affine applied to the sample points before reading the
            mask (e.g. a mirror: the map then describes the mirrored skull).
        volume: optional (I, J, K) mask to read instead of ``skull.mask`` (bool or 0/1 uint8,
            C- or Fortran-ordered; read in place).
        coarse_factor: first-pass lattice step in grid cells (1: cast every ray).
        exact: optional bool (Nα, Nβ) rays to cast at the full step in any case (e.g. another
            map's ``exact``, so that a mirror map is exact wherever the first one is).
        device: None: numpy, skipping empty space, on :func:`cpu_threads` threads (torch's
            ``get_num_threads()`` when torch is loaded); or a torch device ("cuda", "cpu"):
            every sample read by torch on it. All give the same map.
    """
    centre = cranial_centre(skull) if centre is None else np.asarray(centre, dtype=np.float64)
    sampler = _Sampler(skull, centre, transform, volume, device)
    alpha, beta = angle_grid(step_deg)
    shape = (len(alpha), len(beta))
    if coarse_factor <= 1:
        hit, r_out, r_in = sampler.cast(directions(alpha[:, None], beta[None, :]).reshape(-1, 3))
        return RayMap(centre, float(step_deg), hit.reshape(shape), r_out.reshape(shape), r_in.reshape(shape))
    sharp_mm = max(SHARP_MM, 2.0 * float(np.max(skull.spacing)))  # above the voxel quantisation
    maps = _coarse_to_fine(sampler, alpha, beta, int(coarse_factor), exact, sharp_mm)
    return RayMap(centre, float(step_deg), *maps)


def _coarse_to_fine(sampler: _Sampler, alpha, beta, factor: int, must: np.ndarray | None, sharp_mm: float):
    """(hit, r_out, r_in, exact) on the full grid: see the module docstring."""
    shape = (len(alpha), len(beta))
    hit = np.zeros(shape, dtype=bool)
    r_out = np.full(shape, np.nan, dtype=np.float32)
    r_in = np.full(shape, np.nan, dtype=np.float32)
    done = np.zeros(shape, dtype=bool)

    def cast_cells(cells: np.ndarray) -> None:
        rows, cols = np.nonzero(cells & ~done)
        if rows.size:
            hit[rows, cols], r_out[rows, cols], r_in[rows, cols] = sampler.cast(directions(alpha[rows], beta[cols]))
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
