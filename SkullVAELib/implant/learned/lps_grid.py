"""An axis-aligned LPS grid around a skull, and the way back to the skull's own grid.

The learned refiner works on isotropic voxels whose axes are the patient's LPS axes (x left,
y posterior, z superior), whatever the scanner's direction matrix: the network then always sees
a face the same way up. SimpleITK does the resampling both ways (linear), so oblique inputs land
back on their exact grid, origin, spacing and direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_memory
from SkullVAELib.data.regions import bone_bounds
from SkullVAELib.io.image import SkullImage


@dataclass(frozen=True)
class LpsGrid:
    """origin: (3,) mm, LPS position of voxel (0, 0, 0); spacing: mm (isotropic); shape: (X, Y, Z)."""

    origin: tuple[float, float, float]
    spacing: float
    shape: tuple[int, int, int]

    def reference(self) -> sitk.Image:
        """An empty SimpleITK image on this grid (identity direction)."""
        image = sitk.Image([int(s) for s in self.shape], sitk.sitkUInt8)
        image.SetOrigin([float(o) for o in self.origin])
        image.SetSpacing([float(self.spacing)] * 3)
        return image


def to_lps_grid(skull: SkullImage, spacing_mm: float = 1.0, margin_mm: float = 8.0) -> tuple[np.ndarray, LpsGrid]:
    """Resample ``skull`` onto an LPS-aligned isotropic grid covering its bone plus ``margin_mm``.

    Returns:
        (bone fraction float32 (X, Y, Z) in [0, 1] (linear interpolation of the mask), grid).
    """
    grid = lps_grid_around(skull, spacing_mm, margin_mm)
    return resample_onto(skull, grid), grid


def lps_grid_around(skull: SkullImage, spacing_mm: float = 1.0, margin_mm: float = 8.0) -> LpsGrid:
    """The LPS-aligned isotropic grid of ``spacing_mm`` covering ``skull``'s bone plus ``margin_mm``."""
    if not spacing_mm > 0:
        raise SkullVAEError(f"the refiner's grid spacing must be positive millimetres, got {spacing_mm}")
    if not skull.mask.any():
        raise SkullVAEError(
            "the skull mask is empty: no bone to place the refiner's grid on", skull.metadata.get("source")
        )
    # the corners of the bone's index box (exact=False): where the refiner's grids were placed when it was trained
    mask = torch.from_numpy(skull.mask.copy())  # a read-only input (a memory map) is never handed to torch
    lo, hi = (b.numpy() for b in bone_bounds(mask, skull.origin, skull.spacing, skull.direction, exact=False))
    lo, hi = lo - margin_mm, hi + margin_mm
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing_mm).astype(int) + 1)
    check_memory(float(np.prod(shape)) * 8.0, f"a {shape} refiner grid", skull.metadata.get("source"))
    return LpsGrid(tuple(float(v) for v in lo), float(spacing_mm), shape)


def resample_onto(skull: SkullImage, grid: LpsGrid) -> np.ndarray:
    """float32 (X, Y, Z) in [0, 1]: ``skull``'s mask resampled (linear) onto ``grid``, its bone fraction."""
    # linear interpolation of the uint8 mask straight into float32 (no float copy of the whole scan)
    warped = sitk.Resample(skull.to_sitk(), grid.reference(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0)))


def antialias_sigmas_mm(skull: SkullImage, spacing_mm: float) -> list[float]:
    """Per scan axis, the Gaussian's sigma (mm) that anti-aliases ``skull`` before sampling it every
    ``spacing_mm``: half of what the sampling coarsens the axis by (0 where the scan is coarser)."""
    return [max(float(spacing_mm) - float(s), 0.0) / 2.0 for s in skull.spacing]


def bone_fraction_onto(skull: SkullImage, grid: LpsGrid, spacing_mm: float | None = None) -> np.ndarray:
    """float32 (X, Y, Z) in [0, 1]: ``skull``'s mask anti-aliased for a grid of ``spacing_mm``
    (default ``grid.spacing``), then resampled (linear) onto ``grid``: the share of bone about each point.

    A mask read at points ``spacing_mm`` apart (:func:`resample_onto`) misses a plate thinner than
    that between two points; smoothed first by a Gaussian of :func:`antialias_sigmas_mm`, every
    plate leaves a trace (a 1 mm plate reads ≥ 0.15 at its nearest point of a 2 mm grid, wherever it lies). SimpleITK's
    ``DiscreteGaussian`` takes the sigmas in mm along the scan's axes (oblique scans included) and,
    unlike its recursive filter, a sigma of 0 on an axis already coarser than the grid.
    """
    check_memory(float(skull.mask.size) * 9.0, "the anti-aliased skull mask", skull.metadata.get("source"))
    sigmas = antialias_sigmas_mm(skull, grid.spacing if spacing_mm is None else spacing_mm)
    image = sitk.Cast(skull.to_sitk(), sitk.sitkFloat32)
    if max(sigmas) > 0:
        image = sitk.DiscreteGaussian(image, [s * s for s in sigmas], 32, 0.01, True)
    warped = sitk.Resample(image, grid.reference(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    fraction = np.transpose(sitk.GetArrayViewFromImage(warped), (2, 1, 0))
    return np.ascontiguousarray(np.clip(fraction, 0.0, 1.0))


def grid_corners(grid: LpsGrid, start=(0, 0, 0), shape=None) -> np.ndarray:
    """(8, 3) LPS mm: the corner voxels' centres of ``grid`` (or of its block at ``start`` of ``shape``)."""
    shape = grid.shape if shape is None else shape
    lo = np.asarray(grid.origin) + np.asarray(start, dtype=np.float64) * grid.spacing
    extent = (np.asarray(shape, dtype=np.float64) - 1) * grid.spacing
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * 3, indexing="ij")).reshape(3, -1).T
    return lo + corners * extent


def from_lps_grid(values: np.ndarray, grid: LpsGrid, like: SkullImage, box: tuple[slice, ...] | None = None):
    """float32: ``values`` (X, Y, Z) on ``grid`` resampled (linear) onto ``like``'s exact grid, (I, J, K),
    or onto its ``box`` only (the box's shape): the same numbers there at a fraction of the cost."""
    if tuple(values.shape) != tuple(grid.shape):
        raise SkullVAEError(f"values of shape {values.shape} do not match the refiner grid {grid.shape}")
    voxels = like.mask.size if box is None else int(np.prod([s.stop - s.start for s in box]))
    check_memory(voxels * 8.0, "the refiner's output on the patient's grid", like.metadata.get("source"))
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(values.astype(np.float32), (2, 1, 0))))
    image.CopyInformation(grid.reference())
    if box is None:
        reference = like.to_sitk()
    else:
        reference = like.to_sitk(np.zeros([s.stop - s.start for s in box], np.uint8), box=box)
    back = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayViewFromImage(back), (2, 1, 0)).copy()
