"""Map skulls between their original voxel grid and the model grid.

Two modes:

* ``"area"`` (default, accurate): the model-grid value is the bone fraction of the
  original voxels it covers (soft occupancy in [0, 1], like ``F.interpolate(mode="area")``
  / MONAI ``Resize(mode="area")``); back on the original grid, probabilities are
  interpolated trilinearly (``align_corners=False``, the same voxel-as-box convention).
* ``"nearest"`` (the paper's MONAI ``Resized(mode="nearest")``): binary picks of single
  voxels both ways; loses thin bone (its round-trip Dice: ``benchmarks/grid_roundtrip.py``).

Arrays are in ITK index order: original (I, J, K), model grid (X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from SkullVAELib.core.config import RESAMPLE_MODES
from SkullVAELib.io.image import SkullImage

_SLICES_PER_CHUNK = 32  # bounds the float32 working copy to 32 slices at a time


def _check(grid: Sequence[int], mode: str) -> tuple[int, int, int]:
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) <= 0:
        raise ValueError(f"grid must be three positive integers, got {grid}")
    return grid  # type: ignore[return-value]


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output voxel, as torch/MONAI ``nearest``: floor(o · n_in / n_out)."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def _memory_order(array: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A C-contiguous view of ``array`` (no copy when it is C- or F-ordered) and its axis order."""
    if array.flags.c_contiguous:
        return array, (0, 1, 2)
    if array.flags.f_contiguous:  # e.g. masks read by SimpleITK: memory order (K, J, I)
        return array.transpose(2, 1, 0), (2, 1, 0)
    return np.ascontiguousarray(array), (0, 1, 2)


def _area_pool(volume: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    """Adaptive average pooling of a C-contiguous (A, B, C) uint8/bool/float volume.

    Separable: pools the (B, C) plane of ``_SLICES_PER_CHUNK`` slices at a time (so the
    float32 copy stays small), then along A. Equals ``F.adaptive_avg_pool3d`` (box mean).
    """
    if volume.dtype == bool:
        volume = volume.view(np.uint8)
    n_a, n_b, n_c = volume.shape
    if volume.dtype == np.uint8 and n_b % out_shape[1] == 0 and n_c % out_shape[2] == 0:
        planes = _integer_plane_sums(volume, out_shape)
    else:
        planes = torch.empty((n_a, out_shape[1], out_shape[2]), dtype=torch.float32)
        for start in range(0, n_a, _SLICES_PER_CHUNK):
            # a float32 copy per chunk: the volume may be read-only (a memory map), never handed to torch
            chunk = torch.from_numpy(volume[start : start + _SLICES_PER_CHUNK].astype(np.float32))
            pooled = F.adaptive_avg_pool2d(chunk.unsqueeze(1), out_shape[1:]).squeeze(1)
            planes[start : start + chunk.shape[0]] = pooled
    # pool along A: (A, B', C') -> (B'·C', 1, A) -> (B'·C', 1, A')
    flat = planes.reshape(n_a, -1).t().unsqueeze(1)
    pooled = F.adaptive_avg_pool1d(flat, out_shape[0]).squeeze(1).t()
    return pooled.reshape(out_shape).numpy()


def _integer_plane_sums(volume: np.ndarray, out_shape: tuple[int, int, int]) -> torch.Tensor:
    """(A, B', C') box means of a uint8 (A, B, C) mask when B, C are multiples of B', C'.

    Strided integer additions on the uint8 mask (no float32 copy of the full slices): 2.5×
    faster than the pooling kernel for SkullFix (512 → 256) and bit-identical to it, since
    small integer sums are exact in float32.
    """
    n_a = volume.shape[0]
    fb, fc = volume.shape[1] // out_shape[1], volume.shape[2] // out_shape[2]
    acc = np.zeros((n_a, out_shape[1], out_shape[2]), dtype=np.uint8 if fb * fc <= 255 else np.uint16)
    for i in range(fb):
        for j in range(fc):
            acc += volume[:, i::fb, j::fc]
    return torch.from_numpy(acc).to(torch.float32).div_(fb * fc)


def downsample_mask(mask: np.ndarray, grid: Sequence[int], mode: str = "area") -> np.ndarray:
    """Resize a mask (I, J, K) (bool/uint8/float in [0, 1]) to ``grid`` (X, Y, Z), float32 in [0, 1]."""
    grid = _check(grid, mode)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    if mode == "nearest":
        index = np.ix_(*(_nearest_indices(n, g) for n, g in zip(mask.shape, grid, strict=True)))
        return np.ascontiguousarray(mask[index], dtype=np.float32)
    volume, order = _memory_order(mask)
    out = _area_pool(volume, tuple(grid[a] for a in order))  # type: ignore[arg-type]
    out = out.transpose(order)  # back to (X, Y, Z)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0, out=out))


def to_model_grid(image: SkullImage, grid: Sequence[int], mode: str = "area") -> np.ndarray:
    """Soft occupancy of ``image.mask`` on the model grid.

    Args:
        image: the skull, mask (I, J, K).
        grid: (X, Y, Z), e.g. (256, 256, 128); any shape.
        mode: "area" (bone fraction per model voxel) or "nearest" (the paper's; binary).

    Returns:
        float32 array (X, Y, Z) in [0, 1].
    """
    return downsample_mask(image.mask, grid, mode)


def from_model_grid(prob: np.ndarray | torch.Tensor, like: SkullImage, mode: str = "area") -> np.ndarray:
    """Resample model-grid probabilities (X, Y, Z) onto ``like``'s original grid.

    "area": trilinear, ``align_corners=False`` (consistent with area down-sampling);
    "nearest": nearest neighbour like the paper. Returns float32 (I, J, K), one
    full-size allocation (≈ 300 MB for 512×512×300), no float64 copies.
    """
    _check((1, 1, 1), mode)
    tensor = torch.as_tensor(prob).detach().to("cpu", torch.float32)
    if tensor.ndim == 5 and tensor.shape[:2] == (1, 1):
        tensor = tensor[0, 0]
    if tensor.ndim != 3:
        raise ValueError(f"prob must be (X, Y, Z), got shape {tuple(tensor.shape)}")
    shape = like.shape
    if mode == "nearest":
        index = np.ix_(*(_nearest_indices(n, s) for n, s in zip(tensor.shape, shape, strict=True)))
        return tensor.numpy()[index]
    with torch.no_grad():
        up = F.interpolate(tensor[None, None], size=shape, mode="trilinear", align_corners=False)
    return up[0, 0].numpy()
