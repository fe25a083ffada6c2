"""Segmentation metrics of the AutoImplant challenges: DSC, HD95 (pooled), border DSC.

All functions take boolean arrays of one shape (I, J, K) and the voxel ``spacing``
(3,) in millimetres along i, j, k. Distances are computed with
``scipy.ndimage.distance_transform_edt(sampling=spacing)`` on a crop around the masks'
joint bounding box, so full-resolution SkullFix volumes (512×512×Z) stay fast: the
crop keeps every voxel that can change the answer (see each function).

Empty-mask conventions (chosen so that averages over cases stay meaningful):
- ``dice``: both empty → 1.0 (perfect agreement); one empty → 0.0.
- ``hd95``: both empty → 0.0; one empty → ``inf`` (no surface to measure to). Callers
  that average HD95 should report the number of infinite cases separately.
- ``border_dice``: the DSC convention above, applied inside the border region.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from SkullVAELib.implant.cleanup import bounding_box

Spacing = Sequence[float] | np.ndarray


def _as_bool_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _as_spacing(spacing: Spacing | None, ndim: int) -> np.ndarray:
    s = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.size != ndim or np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return s


def dice(a: np.ndarray, b: np.ndarray, threshold: float | None = None) -> float:
    """Dice similarity coefficient 2|A∩B| / (|A| + |B|) of two masks of one shape (the one Dice).

    Both empty → 1.0; exactly one empty → 0.0. Non-boolean arrays count nonzero voxels, or
    voxels above ``threshold`` when given (probabilities, soft occupancy: ``threshold=0.5``).
    """
    if threshold is not None:
        a = a if a.dtype == bool else a > threshold
        b = b if b.dtype == bool else b > threshold
    a, b = _as_bool_pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its one-voxel erosion (6-connected cross).

    Voxels on the array's border count as surface (outside the array is background).
    """
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Spacing | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-way surface distances in mm.

    Returns ``(d_ab, d_ba)``: for every surface voxel of ``a`` the distance to the nearest
    surface voxel of ``b``, and vice versa (1D float64 arrays). Either is empty when the
    corresponding surface is; when the *other* surface is empty the distances are ``inf``.

    Both masks are cropped to their joint bounding box + 1 voxel first: the surfaces are
    unchanged by the crop and all of them lie inside it, so the distances are exact.
    """
    a, b = _as_bool_pair(a, b)
    sp = _as_spacing(spacing, a.ndim)
    box = bounding_box(a | b, margin=1)
    if box is None:
        return np.zeros(0), np.zeros(0)
    a, b = a[box], b[box]
    sa, sb = surface(a), surface(b)

    def one_way(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(np.count_nonzero(src)), np.inf)
        return ndimage.distance_transform_edt(~dst, sampling=sp)[src]

    return one_way(sa, sb), one_way(sb, sa)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing | None = None) -> float:
    """95th percentile Hausdorff distance in mm, AutoImplant definition.

    The 95th percentile of the *pooled* surface distances of both directions
    (pred → gt and gt → pred together). MONAI's ``compute_hausdorff_distance(percentile=95)``
    takes the larger of the two one-way percentiles instead, which is ≥ this value.
    Both empty → 0.0; one empty → inf.
    """
    d_ab, d_ba = surface_distances(pred, gt, spacing)
    pooled = np.concatenate([d_ab, d_ba])
    if pooled.size == 0:
        return 0.0
    if not np.all(np.isfinite(pooled)):
        return float("inf")
    return float(np.percentile(pooled, 95))


def border_region(
    defective: np.ndarray, spacing: Spacing | None = None, distance_mm: float = 10.0, within: np.ndarray | None = None
) -> np.ndarray:
    """Voxels at most ``distance_mm`` from the defective skull (bool, same shape).

    With ``within`` (a bool mask), the distance transform is only computed on the
    bounding box of ``within`` grown by ``distance_mm`` (exact for every voxel of that
    box; voxels outside it are returned False). Empty defective skull → all False.
    """
    defective = np.asarray(defective, dtype=bool)
    sp = _as_spacing(spacing, defective.ndim)
    region = np.zeros(defective.shape, dtype=bool)
    if within is None:
        box = tuple(slice(0, n) for n in defective.shape)
    else:
        # A voxel of the box within distance_mm of bone has its nearest bone voxel inside
        # the grown box; farther voxels stay farther after cropping (cropping only removes bone).
        margin = [int(np.ceil(distance_mm / s)) + 1 for s in sp]
        box = bounding_box(np.asarray(within, dtype=bool), margin=margin)
        if box is None:
            return region
    bone = defective[box]
    if not bone.any():
        return region
    region[box] = ndimage.distance_transform_edt(~bone, sampling=sp) <= distance_mm
    return region


def border_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    defective: np.ndarray,
    spacing: Spacing | None = None,
    distance_mm: float = 10.0,
) -> float:
    """Border DSC (bDSC): DSC of the implants after zeroing both wherever the distance to
    the defective skull exceeds ``distance_mm`` (10 mm in the AutoImplant challenges).

    It scores how well the implant fits the defect's rim, where fit matters surgically.
    """
    pred, gt = _as_bool_pair(pred, gt)
    _as_bool_pair(pred, defective)
    region = border_region(defective, spacing, distance_mm, within=pred | gt)
    return dice(pred & region, gt & region)


def implant_metrics(
    pred: np.ndarray, gt: np.ndarray, defective: np.ndarray, spacing: Spacing | None = None, distance_mm: float = 10.0
) -> dict[str, float]:
    """``{"dsc", "bdsc", "hd95"}`` of a predicted implant against the ground truth.

    All three are computed on one crop: the joint bounding box of ``pred | gt`` grown by
    ``distance_mm`` (+1 voxel), which holds every voxel any of them looks at.
    """
    pred, gt = _as_bool_pair(pred, gt)
    defective = _as_bool_pair(pred, defective)[1]
    sp = _as_spacing(spacing, pred.ndim)
    box = bounding_box(pred | gt, margin=[int(np.ceil(distance_mm / v)) + 2 for v in sp])
    if box is not None:
        pred, gt, defective = pred[box], gt[box], defective[box]
    return {
        "dsc": dice(pred, gt),
        "bdsc": border_dice(pred, gt, defective, sp, distance_mm),
        "hd95": hd95(pred, gt, sp),
    }
