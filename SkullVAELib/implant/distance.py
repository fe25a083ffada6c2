"""Exact Euclidean distance maps in millimetres, computed by SimpleITK.

SimpleITK's Maurer transform is exact and multi-threaded, where ``scipy.ndimage``'s
``distance_transform_edt`` computes a full feature transform on one thread: on a facial implant's
box (281×163×142 voxels) 0.3 s against 1.3 s (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def depth_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """For every voxel of ``mask`` the distance (mm, voxel centre to voxel centre) to the nearest
    voxel outside it; 0 outside the mask.

    Args:
        mask: bool (I, J, K), any memory order.
        spacing: (3,) voxel size in mm along I, J, K (a rotation of the axes changes no distance).

    Returns:
        float32 (I, J, K), the values of ``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``
        up to float32 rounding; ``inf`` everywhere inside a mask that fills the whole array.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    # Maurer measures to the object's boundary voxels; seen from the complement, those are the
    # outside voxels next to the mask, and the nearest outside voxel is always one of them
    outside = sitk.GetImageFromArray(np.ascontiguousarray((~mask).T, dtype=np.uint8))  # (K, J, I): SimpleITK's order
    outside.SetSpacing([float(v) for v in spacing])
    distance = sitk.SignedMaurerDistanceMap(
        outside, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.maximum(sitk.GetArrayFromImage(distance).T, 0.0)
