"""Where a DICOM series' slices lie, and the regular grid a gantry-tilted or an unevenly spaced series is read onto.

A CT scanner whose gantry is tilted (a head CT often is, to keep the orbits out of the beam) writes slices whose
positions step along the table, not along their own normal: the voxels lie on a sheared grid. A regular grid read
from such files (SimpleITK's series reader takes the first slice's position and the slices' distance) puts every
voxel beside where it was scanned, the more the farther from the first slice. Slicer's DICOM module regularises
such a series by resampling it onto a grid along the slices' normal; so does :func:`regularise` here, with
SimpleITK's resampler reading the sheared grid as a non-orthogonal direction matrix (the library's own way of
mapping an index to a point), so the resampled voxels are those the scanner measured, linearly interpolated.

Unevenly spaced slices (a missing slice, a protocol of two slice distances) are resampled onto a grid of the finest
step, each slice between its two neighbours; a gap of more than :data:`MAX_GAP_STEPS` steps, uneven slices of a
tilted gantry, and slices that do not lie on one line are refused: interpolating across a wide gap would invent the
bone there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError

# slices whose positions move along their own plane by more than this share of a pixel, from the first slice to the
# last, are a tilted gantry's (a small tilt over many slices adds up: 0.45° over 200 slices of 1 mm is 1.6 mm)
SHIFT_TOLERANCE_PIXELS = 0.5
# a gantry tilts at most about 30°; a stack stepping farther off its normal is no CT series
MAX_TILT_DEG = 45.0
# slice steps that differ from their median by more than this share are missing or uneven slices
STEP_TOLERANCE = 0.05
# uneven slices are resampled onto the finest step (the 10th percentile of the steps); a gap wider than this many
# of those steps (more than two missing slices in a row) is refused: interpolating across it would invent the bone
MAX_GAP_STEPS = 3.0


@dataclass(frozen=True)
class SliceStack:
    """Where the slices of a series lie (LPS mm).

    Attributes:
        origin: (3,) the first slice's first pixel.
        axes: (3, 3) columns: the slices' row and column directions and the unit step from one slice to the next
            (off the slices' normal by ``tilt_deg`` where the gantry was tilted).
        spacing: (3,) the pixel spacing along a row and a column, and the distance from one slice to the next.
        size: (3,) pixels along a row and a column, and the number of slices.
        heights: (N,) mm of each slice above the first along the normal where the slices are unevenly spaced (a
            missing slice, a protocol of two slice distances; ``spacing[2]`` is then the finest step), else None.
    """

    origin: np.ndarray
    axes: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int, int]
    heights: np.ndarray | None = None

    @property
    def _sideways(self) -> np.ndarray:
        """(3,) mm: how far the last slice lies along its own plane from the first slice's normal."""
        row, column, step = self.axes.T
        normal = np.cross(row, column)
        run = step * self.spacing[2] * (self.size[2] - 1)
        return run - (run @ normal) * normal

    @property
    def tilted(self) -> bool:
        """Whether the stack is sheared: its last slice lies more than :data:`SHIFT_TOLERANCE_PIXELS` of a pixel
        along its own plane from where a regular grid puts it."""
        return bool(np.linalg.norm(self._sideways) > SHIFT_TOLERANCE_PIXELS * self.spacing[:2].min())

    @property
    def tilt_deg(self) -> float:
        """How far the step leans off the slices' normal (degrees; 0 for a regular or an uneven stack)."""
        row, column, step = self.axes.T
        return float(np.degrees(np.arccos(np.clip(abs(step @ np.cross(row, column)), 0.0, 1.0))))

    def regular_grid(self) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, np.ndarray]:
        """(size, spacing (3,) mm, origin (3,) LPS mm, direction (3, 3)) of the regular grid the stack's voxels
        lie on: the stack itself where it is regular; for a tilted one, the grid along the slices' row, column
        and normal, with the stack's pixel spacing and its slices' distance along the normal, grown to cover
        every slice (the shear moves the last slice by the slices' count × step × sin(tilt))."""
        row, column, step = self.axes.T
        normal = np.cross(row, column)
        normal *= np.sign(step @ normal)
        direction = np.stack([row, column, normal], axis=1)
        if self.heights is not None:  # uneven: the finest step from the first slice to the last
            size = (*self.size[:2], int(round(self.heights[-1] / self.spacing[2])) + 1)
            return size, self.spacing.copy(), self.origin.copy(), direction
        if not self.tilted:
            return self.size, self.spacing.copy(), self.origin.copy(), direction
        spacing = np.array([self.spacing[0], self.spacing[1], self.spacing[2] * (step @ normal)])
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in self.size], indexing="ij")).reshape(3, -1).T
        in_frame = (corners * self.spacing) @ (self.axes.T @ direction)  # corners in (row, column, normal) mm
        low, high = in_frame.min(axis=0), in_frame.max(axis=0)
        size = tuple(int(n) for n in np.round((high - low) / spacing).astype(int) + 1)
        return size, spacing, self.origin + direction @ low, direction


def stack_slices(
    positions: np.ndarray,
    row: np.ndarray,
    column: np.ndarray,
    pixel_spacing: tuple[float, float],
    pixels: tuple[int, int],
    folder: str | os.PathLike,
) -> SliceStack:
    """The :class:`SliceStack` of slices at ``positions`` (N, 3) LPS mm in file order, with pixel rows along ``row``
    and columns along ``column`` (unit (3,)), ``pixel_spacing`` mm and ``pixels`` (along a row, a column).

    Raises SkullVAEError naming ``folder``: two slices at one position, missing or uneven slices, slices that
    step more than :data:`MAX_TILT_DEG` off their normal."""
    steps = np.diff(positions, axis=0)
    lengths = np.linalg.norm(steps, axis=1)
    if np.any(lengths <= 1e-6):
        raise SkullVAEError("the DICOM series holds two slices at one position", folder)
    normal = np.cross(row, column)
    normal *= np.sign((positions[-1] - positions[0]) @ normal)  # along the stack: slice k + 1 above slice k
    heights = (positions - positions[0]) @ normal
    along = np.diff(heights)
    if np.any(along <= 1e-6):
        raise SkullVAEError("the DICOM series' slices are not in order along their normal", folder)
    step = (positions[-1] - positions[0]) / (len(positions) - 1)  # the mean step: its lean is the gantry's tilt
    tilt = float(np.degrees(np.arccos(np.clip(np.abs(step @ normal) / np.linalg.norm(step), 0.0, 1.0))))
    if tilt > MAX_TILT_DEG:
        raise SkullVAEError(
            f"the DICOM series' slices step {tilt:.1f}° off their normal (a gantry tilts at most about 30°); "
            "not a CT stack",
            folder,
        )
    sideways = positions - positions[0] - np.outer(heights, normal)  # each slice's shift along its own plane
    off_line = sideways - np.outer(heights / heights[-1], sideways[-1])
    if np.linalg.norm(off_line, axis=1).max() > 0.5 * min(pixel_spacing):
        raise SkullVAEError("the DICOM series' slices do not lie on one line (their positions wander)", folder)
    tilted = bool(np.linalg.norm(sideways[-1]) > SHIFT_TOLERANCE_PIXELS * min(pixel_spacing))
    origin = np.asarray(positions[0], dtype=np.float64)
    median = float(np.median(along))
    if np.all(np.abs(along - median) <= STEP_TOLERANCE * median):  # evenly spaced
        if not tilted:  # a regular stack: along its normal, by its median distance
            step = normal * median
        axes = np.stack([row, column, step / np.linalg.norm(step)], axis=1)
        spacing = np.array([*pixel_spacing, np.linalg.norm(step)], dtype=np.float64)
        return SliceStack(origin, axes, spacing, (*pixels, len(positions)))
    finest = float(np.percentile(along, 10))  # the fine part's step (a stray close pair of slices does not set it)
    widest = float(along.max())
    if tilted or widest > MAX_GAP_STEPS * (1.0 + STEP_TOLERANCE) * finest:
        why = "a tilted gantry's" if tilted else f"a gap of {widest:.2f} mm where the slices are {finest:.2f} mm apart"
        raise SkullVAEError(
            f"the DICOM series has missing or uneven slices (steps {finest:.2f}-{widest:.2f} mm, {why}); complete or "
            "resample it first",
            folder,
        )
    axes = np.stack([row, column, normal], axis=1)
    spacing = np.array([*pixel_spacing, finest], dtype=np.float64)
    return SliceStack(origin, axes, spacing, (*pixels, len(positions)), heights)


def regularise(image: sitk.Image, stack: SliceStack) -> sitk.Image:
    """``image`` (the series' voxels as SimpleITK's series reader stacks them, slice k the k-th file) on
    ``stack.regular_grid()``: as read for a regular stack (the reader's grid is that one); for a tilted one placed
    on its sheared grid and resampled (linear; outside the scan: the image's lowest value, air in a CT); for an
    uneven one, each slice of the grid blended from the two slices about its height (:func:`_between_slices`)."""
    if stack.heights is not None:
        return _between_slices(image, stack)
    if not stack.tilted:
        return image
    size, spacing, origin, direction = stack.regular_grid()
    image.SetOrigin(tuple(stack.origin))
    image.SetSpacing(tuple(stack.spacing))
    image.SetDirection(tuple(stack.axes.ravel()))  # non-orthogonal: ITK maps a sheared index to its point
    outside = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(spacing), tuple(direction.ravel()), outside
    )


def _between_slices(image: sitk.Image, stack: SliceStack) -> sitk.Image:
    """An uneven stack on its regular grid: slice n at height n × the finest step, linearly between the two slices
    about it. Hand-written: SimpleITK's resampler takes one affine grid, and these slices lie on none; along one
    axis the interpolation is a weighted sum of two slices."""
    size, spacing, origin, direction = stack.regular_grid()
    voxels = sitk.GetArrayViewFromImage(image)  # (K, J, I)
    heights = np.asarray(stack.heights, dtype=np.float64)
    wanted = np.arange(size[2]) * spacing[2]
    below = np.clip(np.searchsorted(heights, wanted, side="right") - 1, 0, len(heights) - 2)
    weight = np.clip((wanted - heights[below]) / (heights[below + 1] - heights[below]), 0.0, 1.0)
    out = np.empty((size[2], *voxels.shape[1:]), dtype=np.float64 if voxels.dtype == np.float64 else np.float32)
    for n, (k, w) in enumerate(zip(below, weight, strict=True)):
        np.add((1.0 - w) * voxels[k], w * voxels[k + 1], out=out[n])
    if voxels.dtype.kind in "iu":  # keep the scan's integer type (HU)
        out = np.rint(out).astype(voxels.dtype)
    result = sitk.GetImageFromArray(out)
    result.SetOrigin(tuple(origin))
    result.SetSpacing(tuple(spacing))
    result.SetDirection(tuple(direction.ravel()))
    return result


def tilt_note(stack: SliceStack) -> list[str]:
    """The warning a tilted or unevenly spaced stack's result carries (none for a regular one)."""
    size = "x".join(str(n) for n in stack.regular_grid()[0])
    if stack.heights is not None:
        steps = np.diff(stack.heights)
        return [
            f"unevenly spaced slices (steps {steps.min():.2f}-{steps.max():.2f} mm: a missing slice, or two slice "
            f"distances): resampled onto a regular grid of {stack.spacing[2]:.2f} mm ({size} voxels), each slice "
            "between its two neighbours; the outputs lie on that grid"
        ]
    if not stack.tilted:
        return []
    return [
        f"a gantry-tilted series (its slices step {stack.tilt_deg:.1f}° off their normal): resampled onto a regular "
        f"grid along the slices' normal ({size} voxels), as Slicer's DICOM module regularises one; the outputs lie "
        "on that grid"
    ]
