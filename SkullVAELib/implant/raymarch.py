"""Marching rays through a bone mask: the sampling behind :mod:`raycast`'s ray maps.

Every ray reads the mask (nearest voxel) at fixed radii from one start; what it reports is the
outermost bone sample and where that sample's layer begins. On the CPU the sampling skips empty
space (a block occupancy, then windows of samples) and runs on several threads; with a torch
device it reads every sample there. Both give the same answer as reading every sample.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from SkullVAELib.core.unchanged import fingerprint

CHUNK_SAMPLES = 1 << 20  # samples per vectorised batch on the CPU (memory ~ 20 bytes each)
CHUNK_SAMPLES_CUDA = 1 << 24
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
    key = fingerprint(arr)
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


class RayMarcher:
    """Marches rays from one start through one mask (read in place, any memory order).

    A ray with index-space start s and step u (voxels per mm) reads voxel floor(s + u·r + 0.5)
    per axis at every radius r of ``radii`` (float32 arithmetic, as
    ``scipy.ndimage.map_coordinates(order=0, mode="constant")`` does: no bone outside [0, n - 1]).
    On the CPU (numpy) a ray first reads a block occupancy (BLOCK³ voxels, dilated by one block)
    every few samples, and then the samples only in a window below its outermost occupied block:
    every sample beyond that block is empty, so the result is that of reading every sample.

    Args:
        array: bool (I, J, K) mask (or 0/1 integers), C- or Fortran-ordered.
        start: (3,) index-space start of every ray.
        radii: float32 (n_r,) = ``min_radius + radius_step · arange(n_r)`` (mm).
        device: None (numpy on :func:`cpu_threads` threads) or a torch device (every sample).
    """

    def __init__(self, array, start, radii, min_radius: float, radius_step: float, device=None) -> None:
        arr = np.asarray(array)
        if arr.dtype != bool:
            arr = arr != 0
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr)
        self.array = arr
        self.volume = arr.ravel(order="K")  # no copy
        self.strides = tuple(int(s) // arr.itemsize for s in arr.strides)
        self.dims = tuple(int(n) for n in arr.shape)
        self.start = np.asarray(start, dtype=np.float32)
        self.radii = np.asarray(radii, dtype=np.float32)
        self.min_radius, self.radius_step = float(min_radius), float(radius_step)
        self.device = device
        self._torch_volume = None
        self._blocks = None

    @property
    def blocks(self) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
        """The mask's block occupancy (:func:`_occupancy`), built on first use."""
        if self._blocks is None:
            self._blocks = _occupancy(self.array)
        return self._blocks

    def march(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(last, first) int (n,) of the rays of float32 index-space ``step`` (n, 3): the radius
        index of the outermost bone sample (-1: none) and of the first sample of its layer (0 when
        the layer reaches the first sample)."""
        return self._march_torch(step) if self.device is not None else self._march_threads(step)

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
        reach = float(np.abs(step).max(initial=0.0)) * self.radius_step  # voxels per sample, at most
        half = int(max(1, min(8, int((BLOCK - 0.1) / max(reach, 1e-6)))))  # coarse step 2·half samples
        coarse_radii = self.min_radius + self.radius_step * 2 * half * np.arange((n_r - 1 + half) // (2 * half) + 1)
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

    def march_every(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`march` reading every sample (numpy, one thread: the reference)."""
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
