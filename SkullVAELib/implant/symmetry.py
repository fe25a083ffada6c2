"""The skull's mid-sagittal plane and the mirror (left-right reflection) about it.

Found by registering the left-right flipped skull to itself with SimpleITK (rigid Euler
transform, mean squares on a Gaussian-smoothed mask resampled to ``spacing_mm``): if F0 flips
about the plane x = c (LPS) and T is the registration, S = F0 ∘ T maps the skull onto itself
mirrored. S is then made an exact reflection p ↦ M (p - q) + q with M = I - 2 n nᵀ, the plane
normal n being the eigenvector of S's linear part nearest eigenvalue -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from SkullVAELib.io.image import SkullImage

DEFAULT_SPACING_MM = 4.0


@dataclass
class MirrorPlane:
    """Plane through ``point`` (3,) LPS mm with unit ``normal`` (3,); ``metric``: final registration value."""

    point: np.ndarray
    normal: np.ndarray
    metric: float = float("nan")

    def transform(self) -> np.ndarray:
        """(4, 4) LPS affine of the reflection about the plane (its own inverse)."""
        n = self.normal / np.linalg.norm(self.normal)
        m = np.eye(3) - 2.0 * np.outer(n, n)
        out = np.eye(4)
        out[:3, :3] = m
        out[:3, 3] = self.point - m @ self.point
        return out


def _reflection(point: np.ndarray, normal: np.ndarray) -> np.ndarray:
    return MirrorPlane(point, normal).transform()


def _smoothed(skull: SkullImage, spacing_mm: float) -> sitk.Image:
    """The mask as float, averaged down (BinShrink) to about ``spacing_mm`` voxels and smoothed."""
    img = sitk.Cast(skull.to_sitk(), sitk.sitkFloat32)
    factors = [max(int(round(spacing_mm / s)), 1) for s in img.GetSpacing()]
    img = sitk.BinShrink(img, factors)
    return sitk.SmoothingRecursiveGaussian(img, spacing_mm / 2.0)


def find_mirror_plane(skull: SkullImage, spacing_mm: float = DEFAULT_SPACING_MM) -> MirrorPlane:
    """The mid-sagittal plane of ``skull`` (any geometry) by flip-and-register."""
    from SkullVAELib.implant.raycast import bone_points

    pts = bone_points(skull, every=max(int(skull.mask.sum()) // 100_000, 1))
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    centre[0] = float(np.median(pts[:, 0]))
    flip0 = _reflection(centre, np.array([1.0, 0.0, 0.0]))
    fixed = _smoothed(skull, spacing_mm)
    to_flip = sitk.AffineTransform(3)
    to_flip.SetMatrix(tuple(flip0[:3, :3].ravel()))
    to_flip.SetTranslation(tuple(flip0[:3, 3]))
    moving = sitk.Resample(fixed, fixed, to_flip, sitk.sitkLinear, 0.0)  # moving(p) = fixed(F0 p)
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(float(v) for v in centre))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.5
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetInitialTransform(euler, inPlace=True)
    reg.Execute(fixed, moving)
    # fixed(p) ≈ moving(T p) = fixed(F0 T p): S = F0 ∘ T
    rot = np.array(euler.GetMatrix()).reshape(3, 3)
    t_lin = rot
    t_off = np.array(euler.GetTranslation()) + np.array(euler.GetCenter()) - rot @ np.array(euler.GetCenter())
    s_lin = flip0[:3, :3] @ t_lin
    s_off = flip0[:3, :3] @ t_off + flip0[:3, 3]
    values, vectors = np.linalg.eigh(0.5 * ((np.eye(3) - s_lin) + (np.eye(3) - s_lin).T) / 2.0)
    normal = vectors[:, int(np.argmax(values))]
    normal = normal if normal[0] >= 0 else -normal
    mirrored = s_lin @ centre + s_off
    point = 0.5 * (centre + mirrored)
    return MirrorPlane(point, normal, float(reg.GetMetricValue()))


def mirror_mask(skull: SkullImage, plane: MirrorPlane) -> np.ndarray:
    """bool (I, J, K): the skull mirrored about ``plane``, on its own grid (nearest neighbour)."""
    refl = plane.transform()
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(refl[:3, :3].ravel()))
    tx.SetTranslation(tuple(refl[:3, 3]))
    img = skull.to_sitk()
    out = sitk.Resample(img, img, tx, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayViewFromImage(out).transpose(2, 1, 0).astype(bool)
