"""The one post-processing every implant source shares.

Closing (a ball of ``closing_mm``), thin-shell removal, keep the pieces that touch the patient's
bone, drop islands smaller than ``min_island_mm3`` and pieces below ``min_piece_fraction`` × the
largest. Works on the implant's bounding box only, so its cost follows the implant, not the scan.
The patient's bone is never added to: the result is disjoint from ``skull.mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SkullVAELib.implant.cleanup import bounding_box, keep_major_components, remove_small_components, remove_thin_shells
from SkullVAELib.io.image import SkullImage

_CUBE = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of :func:`postprocess_implant` (lengths in mm, volumes in mm³)."""

    closing_mm: float = 1.0
    min_island_mm3: float = 50.0
    min_piece_fraction: float = 0.0  # pieces below this × the largest are dropped (0: keep all)


def ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """bool structuring element: the voxels within ``radius_mm`` of the centre (anisotropic ``spacing``, mm)."""
    radius = np.maximum(np.round(radius_mm / np.asarray(spacing)).astype(int), 1)
    grid = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radius)]
    return sum((g * s) ** 2 for g, s in zip(grid, spacing, strict=True)) <= radius_mm**2 + 1e-6


def postprocess_implant(implant: np.ndarray, skull: SkullImage, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """The cleaned implant: bool (I, J, K) on ``skull``'s grid, disjoint from its bone.

    Args:
        implant: bool (I, J, K) proposal of any source.
        skull: the patient's defective skull (its mask is never modified).
    """
    cfg = cfg or PostprocessConfig()
    box = bounding_box(implant, margin=int(np.ceil(cfg.closing_mm / skull.spacing.min())) + 2)
    if box is None:
        return np.zeros_like(skull.mask)  # the mask's memory order: mixed-order ops cost 1 s each
    crop, bone = implant[box], skull.mask[box]
    crop = ndimage.binary_closing(crop, structure=ball(cfg.closing_mm, skull.spacing)) & ~bone
    crop = remove_thin_shells(crop)
    crop = remove_small_components(crop, cfg.min_island_mm3 / skull.voxel_volume_mm3)
    labels, n = ndimage.label(crop, structure=_CUBE)
    if n:
        touching = np.unique(labels[ndimage.binary_dilation(bone, structure=_CUBE) & crop])
        crop = np.isin(labels, touching[touching > 0])
    if cfg.min_piece_fraction > 0:
        crop = keep_major_components(crop, cfg.min_piece_fraction)
    out = np.zeros_like(skull.mask)
    out[box] = crop
    return out
