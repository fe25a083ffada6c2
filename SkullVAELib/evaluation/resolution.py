"""A case as a coarser scan would show it: the evaluation on clinical slice thicknesses (issue 24).

SkullFix's scans have 0.4-0.6 mm voxels; a clinical head CT is often reconstructed with 1-3 mm
slices. :func:`coarser_case` puts a :class:`~SkullVAELib.evaluation.implants.DefectCase` on a grid of
another spacing over the same physical box (same direction, the first voxel's corner in place): every
mask is the linear interpolation of its 0/1 volume, thresholded at 0.5 (SimpleITK), which is what a
bone segmentation of the coarser, partial-volume scan gives. The true implant stays disjoint from the
coarse defective skull. ``benchmarks/rimfit_variants.py --spacing`` scores the rim fit on such cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage


def parse_spacing(text: str) -> tuple[float, float, float]:
    """(i, j, k) mm from ``"IxJxK"`` (e.g. ``"1x1x3"``) or one number for all three; one-line error otherwise."""
    parts = text.lower().split("x")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise SkullVAEError(f"a voxel spacing is 1 or 3 positive millimetres like 1x1x3, got {text!r}")
    return values[0], values[1], values[2]


def coarser_grid(image: SkullImage, spacing: Sequence[float]) -> sitk.Image:
    """An empty SimpleITK image on ``image``'s box with voxels of ``spacing`` (mm, along i, j, k).

    The direction is kept; the sizes are the box's extent over the new spacing, rounded; the origin
    moves so that the first voxel's outer corner stays where it was."""
    new = np.asarray(spacing, dtype=np.float64)
    if new.shape != (3,) or not np.all(np.isfinite(new) & (new > 0)):
        raise SkullVAEError(f"a voxel spacing is 3 positive millimetres, got {list(spacing)}")
    size = np.maximum(np.rint(np.asarray(image.shape) * image.spacing / new), 1).astype(int)
    origin = image.origin + image.direction @ ((new - image.spacing) / 2.0)
    reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    reference.SetSpacing([float(v) for v in new])
    reference.SetOrigin([float(v) for v in origin])
    reference.SetDirection([float(v) for v in image.direction.ravel()])
    return reference


def resample_mask(image: SkullImage, mask: np.ndarray, reference: sitk.Image) -> SkullImage:
    """``mask`` (bool, on ``image``'s grid) on ``reference``'s grid: linear interpolation of its 0/1
    values, ≥ 0.5 (outside the box: 0). The uint8 mask is interpolated straight into float32 on the
    (coarser) reference grid, as ``lps_grid.resample_onto`` does: no float copy of the whole scan."""
    moved = sitk.Resample(
        image.to_sitk(np.asarray(mask)), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32
    )
    origin, spacing, direction = SkullImage.geometry_from_sitk(moved)
    values = sitk.GetArrayViewFromImage(moved).transpose(2, 1, 0)
    return SkullImage(values >= 0.5, origin, spacing, direction, {"resampled_from": [float(v) for v in image.spacing]})


def coarser_case(case, spacing: Sequence[float]):
    """``case`` (a :class:`~SkullVAELib.evaluation.implants.DefectCase`) on a grid of ``spacing`` mm
    over the same box: the defective skull, its true implant (less the coarse skull's bone) and the
    complete skull, each resampled by :func:`resample_mask`."""
    from SkullVAELib.evaluation.implants import DefectCase

    reference = coarser_grid(case.defective, spacing)
    defective = resample_mask(case.defective, case.defective.mask, reference)
    implant = resample_mask(case.defective, case.implant, reference).mask & ~defective.mask
    complete = resample_mask(case.defective, case.complete, reference).mask
    return DefectCase(case.case_id, case.defect, case.seed, defective, implant, complete)
