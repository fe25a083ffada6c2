"""Facial defects drawn on an LPS-aligned grid in torch (on the GPU while training).

The same slab as :func:`SkullVAELib.data.defects.facial_defect` (the evaluation's generator): from the
most anterior bone backwards, over the lower part of the skull, a random width near the midline;
the ranges are widened around the generator's (its depth is 44 mm) so the refiner learns faces,
not one box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FacialDrawRanges:
    """Uniform ranges of the slab: depth in mm, height and width as fractions of the skull's extent."""

    depth_mm: tuple[float, float] = (34.0, 54.0)
    height: tuple[float, float] = (0.40, 0.65)
    width: tuple[float, float] = (0.55, 1.00)


EVALUATION_RANGES = FacialDrawRanges(depth_mm=(44.0, 44.0), height=(0.45, 0.60), width=(0.60, 1.00))


def bone_bounds(bone: torch.Tensor, origin: torch.Tensor, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi): (3,) mm LPS bounds of the bone voxel centres of ``bone`` (bool (X, Y, Z))."""
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(bone.any(dim=others)).flatten()
        lo.append(hit[0])
        hi.append(hit[-1])
    o = origin.float().to(bone.device)
    return o + spacing * torch.stack(lo).float(), o + spacing * torch.stack(hi).float()


def facial_region(
    shape: tuple[int, int, int],
    origin: torch.Tensor,
    spacing: float,
    lo: torch.Tensor,
    hi: torch.Tensor,
    generator: torch.Generator,
    ranges: FacialDrawRanges = FacialDrawRanges(),
) -> torch.Tensor:
    """bool (X, Y, Z): one drawn slab on the grid (``lo``/``hi``: the complete skull's bone bounds)."""

    def uniform(bounds: tuple[float, float]) -> float:
        return bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=generator))

    extent = (hi - lo).cpu()
    depth, height = uniform(ranges.depth_mm), uniform(ranges.height) * float(extent[2])
    width = uniform(ranges.width) * float(extent[0])
    centre_x = 0.5 * float(lo[0] + hi[0]) + uniform((-0.5, 0.5)) * (float(extent[0]) - width)
    device = lo.device
    x, y, z = (origin[a].float().to(device) + spacing * torch.arange(shape[a], device=device) for a in range(3))
    in_x = (x - centre_x).abs() <= 0.5 * width
    in_y = y <= lo[1] + depth
    in_z = z <= lo[2] + height
    return in_x[:, None, None] & in_y[None, :, None] & in_z[None, None, :]
