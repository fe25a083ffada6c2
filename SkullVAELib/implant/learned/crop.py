"""The face crop: anchors a facial defect leaves in place, and the crop they place (torch).

A facial defect removes the front of the lower skull; the bone's left-right centre, its lowest
point (the skull base) and, nearly, its most anterior point (the forehead) stay (docs/results/issue-09.md,
the learned refiner). The crop is placed from those, so training (on skulls with drawn defects)
and inference (on the patient's defective skull) see the face at the same place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.regions import bone_bounds
from SkullVAELib.implant.learned.config import RefinerConfig


def face_anchor(bone: torch.Tensor, origin: torch.Tensor, spacing: float) -> torch.Tensor:
    """(3,) mm: the left-right centre, most anterior and lowest LPS position of ``bone``.

    bone: bool (X, Y, Z) on an LPS-aligned grid with voxel (0, 0, 0) at ``origin`` (3,) mm.
    """
    if not bool(bone.any()):
        raise SkullVAEError("the skull has no bone on the refiner's grid")
    lo, hi = bone_bounds(bone, origin, spacing)
    return torch.stack([0.5 * (lo[0] + hi[0]), lo[1], lo[2]])


def crop_start(anchor: torch.Tensor, origin: torch.Tensor, cfg: RefinerConfig) -> list[int]:
    """The grid index (3 ints) of the crop's first voxel: the anchor plus the offset, rounded."""
    offset = torch.tensor(cfg.crop_offset_mm, dtype=anchor.dtype, device=anchor.device)
    return [int(v) for v in torch.round((anchor + offset - origin.to(anchor)) / cfg.spacing_mm).tolist()]


def _overlap(start: list[int], crop_shape, volume_shape) -> tuple[tuple, tuple] | None:
    """(volume slices, crop slices) where a crop at ``start`` overlaps the volume; None: nowhere."""
    in_volume, in_crop = [], []
    for s, n, size in zip(start, crop_shape, volume_shape, strict=True):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return None
        in_volume.append(slice(lo, hi))
        in_crop.append(slice(lo - s, hi - s))
    return tuple(in_volume), tuple(in_crop)


def cut(volume: torch.Tensor, start: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """volume[..., start:start+shape] (last 3 dims), zero where the crop leaves the volume."""
    out = volume.new_zeros(volume.shape[:-3] + tuple(shape))
    both = _overlap(start, shape, volume.shape[-3:])
    if both is not None:
        out[(..., *both[1])] = volume[(..., *both[0])]
    return out


def paste(crop: torch.Tensor, start: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of :func:`cut`: a zero volume of ``shape`` with ``crop`` (..., x, y, z) at ``start``."""
    out = crop.new_zeros(crop.shape[:-3] + tuple(shape))
    both = _overlap(start, crop.shape[-3:], shape)
    if both is not None:
        out[(..., *both[0])] = crop[(..., *both[1])]
    return out


def sample_crop(
    volume: torch.Tensor, start: list[int], cfg: RefinerConfig, matrix: torch.Tensor | None = None
) -> torch.Tensor:
    """(C, *crop_shape) float: ``volume`` (C, X, Y, Z) sampled (trilinear) on the crop at ``start``,
    with the crop's points moved by ``matrix`` ((3, 4), voxels, about the crop centre; None: none).

    Without ``matrix`` this equals :func:`cut`; with it, the training augmentation (rotation,
    scale, shift) costs one ``grid_sample``.
    """
    if matrix is None:
        return cut(volume, start, cfg.crop_shape)
    shape = torch.tensor(cfg.crop_shape, dtype=torch.float32, device=volume.device)
    axes = [torch.arange(n, dtype=torch.float32, device=volume.device) for n in cfg.crop_shape]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) - (shape - 1) / 2  # (x, y, z, 3)
    points = points @ matrix[:, :3].T.float() + matrix[:, 3].float() + (shape - 1) / 2
    points = points + torch.tensor(start, dtype=torch.float32, device=volume.device)
    size = torch.tensor(volume.shape[-3:], dtype=torch.float32, device=volume.device)
    normalised = 2 * points / (size - 1) - 1  # align_corners=True: -1 and 1 are the end voxels' centres
    grid = normalised.flip(-1)[None]  # grid_sample wants (W, H, D) = (z, y, x) order
    if volume.ndim != 4:
        raise SkullVAEError(f"sample_crop needs a (C, X, Y, Z) volume, got {tuple(volume.shape)}")
    return F.grid_sample(volume[None].float(), grid, mode="bilinear", align_corners=True)[0]
