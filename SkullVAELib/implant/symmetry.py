"""The skull's mid-sagittal plane and the mirror (left-right reflection) about it.

Found by registering the left-right flipped skull to itself with SimpleITK (rigid Euler
transform, mean squares on a Gaussian-smoothed mask resampled to ``spacing_mm``, finer by its size's
ratio for a skull smaller than an adult's (:data:`ADULT_SIZE_MM`), a coarse level at twice that
first, a tenth of the voxels sampled on a regular grid): if F0 flips about the plane x = c (LPS)
and T is the registration, S = F0 ∘ T maps the skull onto itself mirrored. S is then made an exact
reflection p ↦ M (p - q) + q with M = I - 2 n nᵀ, the plane normal n being the eigenvector of S's
linear part nearest eigenvalue -1.
F0 is the flip about x = c and, for a head turned or rolled beyond the registration's reach (about
15°), also the best of a coarse set of turned flips (:func:`_starting_normal`); the better match is kept.

The smoothed mask is a block mean computed straight from the mask (no full-resolution float
copy), and the plane is cached for the last skull asked about (:func:`find_mirror_plane`), so
the rim fit, the defect detection and a second Apply on the same skull share one registration.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from SkullVAELib.core.unchanged import fingerprint
from SkullVAELib.io.image import SkullImage

DEFAULT_SPACING_MM = 4.0
# A skull whose bone lies closer to its centroid than this (root mean square, mm) is registered on a grid finer by
# the same ratio, so it spans as many cells as an adult's: on the fixed grid a skull scaled to 0.7 got a plane up
# to 1° off (validation's vault defects 0.939-0.967 against 0.947-0.971 at its adult size's plane). SkullFix's
# 140 skulls lie at 68-80 mm, so they keep the 4 mm grid (docs/results/issue-24-2026-12-07.md, "A child-size skull").
ADULT_SIZE_MM = 64.0
SAMPLED_SHARE = 0.1  # of the smoothed grid's voxels the registration's metric reads (regular grid)
# Where the registration starts: the plane x = const; and where a plane turned by a pair of these (degrees,
# about the LPS z axis: a head turned in the scan; about the y axis: a head rolled) matches the skull to its
# mirror best on a coarse grid and lies beyond START_REACH_DEG of x, from that plane too, the better final
# match kept. From x = const alone a head rolled or turned by 15-25° kept a plane 13-28° off; a turned
# start alone moved a plane found from x = const by 19° (an irregular defect's asymmetry fooled the coarse
# grid) (docs/results/issue-24-2026-12-06.md, "A head in any pose"). Turns up to ±30° left heads turned 50-70° with
# planes far off (vault defects 0.88-0.90, weakest 0.70); up to ±80° they get theirs (0.944-0.946), and the
# 180 skulls of validation, test and the extra skulls keep theirs (section "A head turned 50-70°").
START_ROLLS_DEG = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0)
START_YAWS_DEG = tuple(float(d) for d in range(-80, 81, 10))  # a head turned on the headrest, up to 80°
START_REACH_DEG = 15.0


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


def _sitk_affine(affine: np.ndarray) -> sitk.AffineTransform:
    """The (4, 4) LPS ``affine`` as a SimpleITK transform (Resample reads the input at ``affine`` @ p)."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(affine[:3, :3].ravel()))
    transform.SetTranslation(tuple(affine[:3, 3]))
    return transform


def block_mean(mask: np.ndarray, factors) -> np.ndarray:
    """float32 (K', J', I'): the mean of bool ``mask`` (I, J, K) over blocks of ``factors``
    (fi, fj, fk) voxels, in ITK's (K, J, I) array order; partial blocks at the end are dropped.
    The same numbers as ``sitk.BinShrink`` of the mask as float, without a float copy of it."""
    mem = mask.T  # (K, J, I): contiguous for a Fortran-ordered (SimpleITK) mask
    fi, fj, fk = (int(f) for f in factors)
    n_i, n_j, n_k = (int(n) // f for n, f in zip(mask.shape, (fi, fj, fk), strict=True))
    count = np.uint16 if fi * fj * fk < 2**16 else np.uint32
    slabs = np.zeros((n_k, mem.shape[1], mem.shape[2]), dtype=count)
    for d in range(fk):  # whole slabs first: long contiguous additions
        slabs += mem[d : n_k * fk : fk]
    rows = np.zeros((n_k, n_j, mem.shape[2]), dtype=count)
    for d in range(fj):
        rows += slabs[:, d : n_j * fj : fj]
    sums = rows[:, :, : n_i * fi].reshape(n_k, n_j, n_i, fi).sum(axis=-1, dtype=count)
    return (sums / np.float32(fi * fj * fk)).astype(np.float32)


def _smoothed(skull: SkullImage, spacing_mm: float) -> sitk.Image:
    """The mask as float, averaged down (as BinShrink) to about ``spacing_mm`` voxels and smoothed."""
    factors = np.array([max(int(round(spacing_mm / s)), 1) for s in skull.spacing])
    img = sitk.GetImageFromArray(block_mean(skull.mask, factors))
    spacing = np.asarray(skull.spacing, dtype=np.float64)
    img.SetSpacing(tuple(float(v) for v in spacing * factors))
    # BinShrink's origin: the centre of the first block
    img.SetOrigin(tuple(float(v) for v in np.asarray(skull.origin) + skull.direction @ (spacing * (factors - 1) / 2)))
    img.SetDirection(tuple(float(v) for v in skull.direction.ravel()))
    return sitk.SmoothingRecursiveGaussian(img, spacing_mm / 2.0)


_plane_cache: dict = {}  # the last skull's plane: {"mask": weak reference, "key": ..., "plane": MirrorPlane}


def find_mirror_plane(skull: SkullImage, spacing_mm: float = DEFAULT_SPACING_MM) -> MirrorPlane:
    """The mid-sagittal plane of ``skull`` (any geometry) by flip-and-register on a grid of ``spacing_mm`` (mm)
    for an adult-size skull, finer by the ratio for a smaller one (:func:`skull_size_mm` under
    :data:`ADULT_SIZE_MM`).

    Computed once per skull: asked again about the same skull object (same mask array,
    geometry and bone count) and ``spacing_mm``, it returns a copy of the cached plane.
    """
    key = (
        skull.mask.shape,
        tuple(np.asarray(skull.origin, dtype=float)),
        tuple(np.asarray(skull.spacing, dtype=float)),
        tuple(np.asarray(skull.direction, dtype=float).ravel()),
        fingerprint(skull.mask),
        float(spacing_mm),
    )
    ref = _plane_cache.get("mask")
    if ref is not None and ref() is skull.mask and _plane_cache.get("key") == key:
        plane = _plane_cache["plane"]
        return replace(plane, point=plane.point.copy(), normal=plane.normal.copy())
    plane = _register_mirror_plane(skull, spacing_mm)
    _plane_cache.clear()
    _plane_cache.update(mask=weakref.ref(skull.mask, lambda _: _plane_cache.clear()), key=key, plane=plane)
    return replace(plane, point=plane.point.copy(), normal=plane.normal.copy())


def _register_mirror_plane(skull: SkullImage, spacing_mm: float) -> MirrorPlane:
    """:func:`find_mirror_plane` without the cache."""
    from SkullVAELib.implant.raycast import bone_count, bone_points

    pts = bone_points(skull, every=max(bone_count(skull.mask) // 100_000, 1))
    centre = 0.5 * (pts.min(axis=0) + pts.max(axis=0))
    centre[0] = float(np.median(pts[:, 0]))
    spacing_mm = spacing_mm * float(np.clip(skull_size_mm(pts) / ADULT_SIZE_MM, 0.25, 1.0))  # a speck: a quarter
    fixed = _smoothed(skull, spacing_mm)
    plane = _registered(fixed, centre, np.array([1.0, 0.0, 0.0]), spacing_mm)
    start = _starting_normal(fixed, pts.mean(axis=0))
    if np.degrees(np.arccos(np.clip(start[0], -1.0, 1.0))) > START_REACH_DEG + 1e-6:
        # beyond the registration's reach of x = const: start there too, keep the better match
        turned = _registered(fixed, centre, start, spacing_mm)
        plane = turned if turned.metric < plane.metric else plane
    return plane


def skull_size_mm(points: np.ndarray) -> float:
    """The root mean square distance (mm) of bone ``points`` (N, 3) from their centroid: the skull's size in any
    pose (an adult's 68-80 mm on SkullFix)."""
    return float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1))))


def _registered(fixed: sitk.Image, centre: np.ndarray, start: np.ndarray, spacing_mm: float) -> MirrorPlane:
    """The plane registered on the smoothed mask ``fixed`` from the plane through ``centre`` (LPS mm)
    with unit normal ``start`` (3,)."""
    flip0 = _reflection(centre, start)
    moving = sitk.Resample(fixed, fixed, _sitk_affine(flip0), sitk.sitkLinear, 0.0)  # moving(p) = fixed(F0 p)
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(float(v) for v in centre))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(SAMPLED_SHARE, 1)  # a fixed seed: the same plane on every run
    reg.SetInterpolator(sitk.sitkLinear)
    # The metric's gradient is ~1e-5 on a smoothed mask: SimpleITK's default gradient tolerance (1e-4)
    # stopped the optimiser within a few steps of the starting plane (x = const), so a head rolled or
    # turned in the scan kept a plane 5-12° off (docs/results/issue-24-2026-12-03.md, "The mirror plane, registered").
    # A minimum step of 1e-2 still stopped it 0.5° (up to 2.9°) short: the same skull turned in space got
    # planes that far apart; at 1e-3 they agree within 0.07° (0.3°), at no measurable cost
    # (docs/results/issue-24-2026-12-06.md, "A head in any pose").
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=300, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-10
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])  # a coarse pass first: fewer steps at the fine grid
    reg.SetSmoothingSigmasPerLevel([spacing_mm, 0.0])  # mm
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


def _starting_normal(fixed: sitk.Image, centre: np.ndarray) -> np.ndarray:
    """(3,) unit normal of the plane through ``centre`` (LPS mm; the bone's centroid, which a symmetric
    skull's mid-plane holds in any pose) whose reflection best matches the smoothed mask ``fixed`` to
    itself (mean squares on a grid twice as coarse), among x turned by every pair of
    :data:`START_YAWS_DEG` about z and :data:`START_ROLLS_DEG` about y: a second start for the registration,
    which refines a plane by 10-15° but does not find one 20-30° away."""
    coarse = sitk.BinShrink(fixed, [2, 2, 2])
    values = sitk.GetArrayViewFromImage(coarse)
    best, best_cost = np.array([1.0, 0.0, 0.0]), np.inf
    for yaw in np.deg2rad(START_YAWS_DEG):
        for roll in np.deg2rad(START_ROLLS_DEG):
            normal = np.array([np.cos(yaw) * np.cos(roll), np.sin(yaw) * np.cos(roll), -np.sin(roll)])
            flip = _sitk_affine(_reflection(centre, normal))
            mirrored = sitk.GetArrayFromImage(sitk.Resample(coarse, coarse, flip, sitk.sitkLinear, 0.0))
            cost = float(np.mean((mirrored - values) ** 2))
            if cost < best_cost:
                best, best_cost = normal, cost
    return best


def mirror_mask(skull: SkullImage, plane: MirrorPlane) -> np.ndarray:
    """bool (I, J, K): the skull mirrored about ``plane``, on its own grid (nearest neighbour)."""
    img = skull.to_sitk()
    out = sitk.Resample(img, img, _sitk_affine(plane.transform()), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayViewFromImage(out).transpose(2, 1, 0).astype(bool)
