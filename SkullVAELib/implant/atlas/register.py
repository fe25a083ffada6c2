"""Registration of a complete atlas skull to a defective patient skull (SimpleITK).

Both are compared as smoothed masks (:func:`store.registration_image`) with mean squares,
evaluated only within ``mask_mm`` of the patient's bone: the metric asks the atlas to have bone
where the patient has bone, and says nothing about the missing part (the atlas's bone there
must not be pulled away). Transforms map patient (fixed) points to atlas (moving) points, as
SimpleITK's resampling wants.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def metric_mask(fixed: sitk.Image, mask_mm: float) -> sitk.Image:
    """uint8 mask of the voxels of ``fixed`` (a registration image) within ``mask_mm`` of its bone."""
    bone = fixed > 0.5
    distance = sitk.SignedMaurerDistanceMap(bone, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Cast(distance < mask_mm, sitk.sitkUInt8)


def without_missing_part(
    fixed: sitk.Image,
    mask: sitk.Image,
    placed: list[sitk.Image],
    core_mm: float = 4.0,
    margin_mm: float = 8.0,
    keep_bone: bool = False,
) -> sitk.Image:
    """``mask`` minus the neighbourhood of the bone the patient lacks, for the deformable step.

    ``placed``: atlas registration images already resampled onto ``fixed`` (affinely placed).
    Where most of them have bone farther than ``core_mm`` from the patient's, bone is missing;
    within ``margin_mm`` of that the metric would pull the atlas's bone away from the cut edges
    (the patient has none there), so the B-spline must not see it. ``keep_bone``: it still sees
    the patient's own bone voxels there (one-sided: the atlas must cover the bone by the cut, and
    its bone continuing past the cut costs nothing).
    """
    mean = sum(sitk.Cast(p > 0.5, sitk.sitkFloat32) for p in placed) / float(len(placed))
    distance = sitk.SignedMaurerDistanceMap(
        fixed > 0.5, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    missing = (mean > 0.5) & (distance > core_mm)
    near = sitk.SignedMaurerDistanceMap(missing, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    seen = near > margin_mm
    if keep_bone:
        seen = seen | (fixed > 0.5)
    return sitk.Cast(mask, sitk.sitkUInt8) & sitk.Cast(seen, sitk.sitkUInt8)


def upper_centroid(image: sitk.Image) -> np.ndarray:
    """(3,) LPS mm: centroid of the upper half (LPS z) of the bone of a registration image.

    The vault is intact in facial defects (and mostly so in cranial ones), so it anchors the
    initial alignment better than the whole skull's centroid, which a missing face shifts.
    """
    values = sitk.GetArrayViewFromImage(image)  # (K, J, I)
    k, j, i = np.nonzero(values > 0.5)
    if k.size == 0:
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    index = np.stack([i, j, k], axis=1).astype(np.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = index @ (direction * np.asarray(image.GetSpacing())).T + np.asarray(image.GetOrigin())
    return points[points[:, 2] >= np.median(points[:, 2])].mean(axis=0)


def initial_affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.AffineTransform:
    """Identity affine about the patient's upper centroid, translated onto the atlas's."""
    centre, target = upper_centroid(fixed), upper_centroid(moving)
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in centre))
    transform.SetTranslation(tuple(float(v) for v in target - centre))
    return transform


def _method(mask: sitk.Image, shrink: list[int]) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetShrinkFactorsPerLevel(shrink)
    reg.SetSmoothingSigmasPerLevel([0.0] * len(shrink))
    return reg


def register_affine(
    fixed: sitk.Image,
    mask: sitk.Image,
    moving: sitk.Image,
    transform: sitk.AffineTransform,
    shrink: tuple[int, ...] = (1,),
    iterations: int = 100,
) -> float:
    """Optimise ``transform`` in place (regular-step gradient descent); returns the final metric."""
    reg = _method(mask, list(shrink))
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return float(reg.GetMetricValue())


def register_deformable(
    fixed: sitk.Image,
    mask: sitk.Image,
    moving: sitk.Image,
    affine: sitk.Transform,
    mesh_mm: float = 40.0,
    iterations: int = 30,
    max_displacement_mm: float = 8.0,
) -> tuple[sitk.Transform, float]:
    """A cubic B-spline (control points every ≈ ``mesh_mm``, each moving at most
    ``max_displacement_mm`` per axis) on top of ``affine`` (L-BFGS-B, 2× shrunk then full grid).

    Returns (composite transform affine ∘ B-spline, final metric). The missing part carries no
    metric, so the coarse mesh continues the deformation of the patient's bone smoothly into it.
    """
    extent = [n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing(), strict=True)]
    mesh = [max(int(round(e / mesh_mm)), 1) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    reg = _method(mask, [2, 1])
    bound = max_displacement_mm  # per control point and axis: no folding, no runaway where data is thin
    reg.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=iterations,
        maximumNumberOfCorrections=5,
        lowerBound=-bound,
        upperBound=bound,
    )
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    return sitk.CompositeTransform([affine, bspline]), float(reg.GetMetricValue())
