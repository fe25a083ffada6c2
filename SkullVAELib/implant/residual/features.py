"""What the cranial residual sees, and the way its shift goes back to the patient's grid.

Per implant piece, an LPS-aligned crop (:class:`~SkullVAELib.implant.learned.lps_grid.LpsGrid`)
centred on the piece's centroid, with three channels (float32 (3, X, Y, Z)):

0. the defective bone (fraction, linear resampling of the mask);
1. the rim fit's signed distance in mm (positive inside the implant), clipped to ±``sdf_clip_mm``
   and divided by it;
2. the mirror cue: the defective bone reflected about the mid-sagittal plane (zero without one).

SimpleITK resamples every channel from a sub-box of the patient's grid (never the whole scan), so
oblique scans are read in physical space and the shift lands back on the exact grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from SkullVAELib.core.limits import check_memory
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.distance import depth_mm
from SkullVAELib.implant.learned.lps_grid import LpsGrid, grid_corners
from SkullVAELib.implant.residual.config import ResidualConfig
from SkullVAELib.io.image import SkullImage


def piece_centres(skull: SkullImage, implant: np.ndarray, min_mm3: float = 1000.0) -> list[np.ndarray]:
    """LPS centroids (mm, (3,) each) of the implant's pieces of at least ``min_mm3``, largest first."""
    box = bounding_box(implant)
    if box is None:
        return []
    labels, n = ndimage.label(implant[box])
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    keep = [k + 1 for k in np.argsort(sizes)[::-1] if sizes[k] * skull.voxel_volume_mm3 >= min_mm3]
    offset = np.array([s.start for s in box], dtype=np.float64)
    centres = ndimage.center_of_mass(np.ones_like(labels, dtype=np.uint8), labels, keep)
    affine = skull.index_to_physical()
    return [affine[:3, :3] @ (np.asarray(c) + offset) + affine[:3, 3] for c in centres]


def crop_grid(centre: np.ndarray, cfg: ResidualConfig, pad: int = 0) -> LpsGrid:
    """The crop centred on ``centre`` (LPS mm), ``pad`` voxels wider on every side (for shifts in training)."""
    shape = tuple(int(n) + 2 * pad for n in cfg.crop_shape)
    origin = np.asarray(centre, dtype=np.float64) - (np.asarray(shape) - 1) / 2 * cfg.spacing_mm
    return LpsGrid(tuple(float(v) for v in origin), float(cfg.spacing_mm), shape)


def _affine(transform: np.ndarray) -> sitk.Transform:
    """A (4, 4) LPS matrix as an ITK transform (maps an output point to the point it is read from)."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(np.asarray(transform)[:3, :3].ravel().tolist())
    affine.SetTranslation(np.asarray(transform)[:3, 3].tolist())
    return affine


def mask_on_grid(skull: SkullImage, mask: np.ndarray, grid: LpsGrid, transform: np.ndarray | None = None):
    """float32 (X, Y, Z) in [0, 1]: ``mask`` (on ``skull``'s grid) sampled linearly at ``grid``'s
    points (moved by the (4, 4) LPS ``transform`` first, when given); 0 outside the scan."""
    points = grid_corners(grid)
    if transform is not None:
        points = points @ np.asarray(transform)[:3, :3].T + np.asarray(transform)[:3, 3]
    box = skull.index_box(points)
    if box is None:
        return np.zeros(grid.shape, np.float32)
    image = skull.to_sitk(mask[box], box=box)
    tx = sitk.Transform() if transform is None else _affine(transform)
    out = sitk.Resample(image, grid.reference(), tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def signed_distance(skull: SkullImage, implant: np.ndarray, clip_mm: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """(sdf float32 on the box, box): the implant's signed distance in mm (positive inside, at least
    one voxel; negative outside), clipped to ±``clip_mm``, on the implant's box plus ``clip_mm``.

    ``sdf > 0`` is the implant exactly: each side is the exact distance to the nearest voxel of
    the other (:func:`~SkullVAELib.implant.distance.depth_mm`, anisotropic spacing), not to a
    boundary between them, so the mask is reproduced at 0.
    """
    margin = np.ceil(clip_mm / skull.spacing).astype(int) + 1
    box = bounding_box(implant, margin=margin)
    if box is None:
        raise ValueError("signed_distance needs a non-empty implant")
    inside = implant[box]
    check_memory(
        inside.size * 12.0, f"the residual's distance map on a {inside.shape} box", skull.metadata.get("source")
    )
    sdf = np.where(inside, depth_mm(inside, skull.spacing), -depth_mm(~inside, skull.spacing))
    return np.clip(sdf, -clip_mm, clip_mm), box


def residual_inputs(
    skull: SkullImage,
    sdf: np.ndarray,
    box: tuple[slice, ...],
    grid: LpsGrid,
    cfg: ResidualConfig,
    mirror_transform: np.ndarray | None = None,
) -> np.ndarray:
    """float32 (3, X, Y, Z): the three channels (module docstring) on ``grid``."""
    bone = mask_on_grid(skull, skull.mask, grid)
    sdf_image = skull.to_sitk(sdf, np.float32, box=box)
    resampled = sitk.Resample(sdf_image, grid.reference(), sitk.Transform(), sitk.sitkLinear, -cfg.sdf_clip_mm,
                              sitk.sitkFloat32)  # fmt: skip
    distance = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0)) / cfg.sdf_clip_mm
    if mirror_transform is None:
        mirrored = np.zeros_like(bone)
    else:
        mirrored = mask_on_grid(skull, skull.mask, grid, mirror_transform)
    return np.stack([bone, distance, mirrored]).astype(np.float32)


def shift_on_box(shift: np.ndarray, grid: LpsGrid, skull: SkullImage, box: tuple[slice, ...]) -> np.ndarray:
    """float32 (box shape): the shift (X, Y, Z) mm on ``grid`` resampled (linear) onto ``skull``'s
    grid in ``box``; 0 where the crop does not reach."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(shift.astype(np.float32).transpose(2, 1, 0)))
    image.CopyInformation(grid.reference())
    shape = tuple(s.stop - s.start for s in box)
    reference = skull.to_sitk(np.zeros(shape, np.uint8), box=box)
    back = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(back), (2, 1, 0))
