"""The mirror plane: block means without a float copy of the mask, one registration per skull, a rolled or
turned head's own plane, a child-size skull's grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant import symmetry
from SkullVAELib.implant.raycast import bone_points
from SkullVAELib.io.image import SkullImage


def _reference_smoothed(skull: SkullImage, spacing_mm: float) -> sitk.Image:
    """The smoothing before issue 26: the whole mask cast to float, then BinShrink."""
    img = sitk.Cast(skull.to_sitk(), sitk.sitkFloat32)
    factors = [max(int(round(spacing_mm / s)), 1) for s in img.GetSpacing()]
    return sitk.SmoothingRecursiveGaussian(sitk.BinShrink(img, factors), spacing_mm / 2.0)


@pytest.fixture(scope="module")
def defective() -> SkullImage:
    phantom = make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2))
    return cranial_defect(phantom, 1, style="skullbreak")[0]


def _oblique(order: str) -> SkullImage:
    """A random mask whose shape no block factor divides, on an oblique grid."""
    rng = np.random.default_rng(3)
    mask = rng.random((53, 47, 31)) < 0.3
    t = np.deg2rad(11.0)
    direction = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    mask = np.asfortranarray(mask) if order == "F" else np.ascontiguousarray(mask)
    return SkullImage(mask, (-20.5, 3.25, 7.0), (0.43, 0.43, 0.7), direction)


@pytest.mark.parametrize("order", ["C", "F"])
def test_block_mean_and_geometry_are_binshrinks(order):
    skull = _oblique(order)
    ours, ref = symmetry._smoothed(skull, 4.0), _reference_smoothed(skull, 4.0)
    assert ours.GetSize() == ref.GetSize()
    np.testing.assert_array_equal(ours.GetOrigin(), ref.GetOrigin())
    np.testing.assert_array_equal(ours.GetSpacing(), ref.GetSpacing())
    np.testing.assert_array_equal(ours.GetDirection(), ref.GetDirection())
    np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref), atol=1e-6)
    factors = [9, 9, 6]
    shrunk = sitk.BinShrink(sitk.Cast(skull.to_sitk(), sitk.sitkFloat32), factors)
    np.testing.assert_array_equal(symmetry.block_mean(skull.mask, factors), sitk.GetArrayFromImage(shrunk))


def test_the_plane_is_the_reference_plane(defective, monkeypatch):
    symmetry._plane_cache.clear()
    ours = symmetry.find_mirror_plane(defective)
    monkeypatch.setattr(symmetry, "_smoothed", _reference_smoothed)
    symmetry._plane_cache.clear()
    ref = symmetry.find_mirror_plane(defective)
    np.testing.assert_allclose(ours.normal, ref.normal, atol=1e-6)
    np.testing.assert_allclose(ours.point, ref.point, atol=1e-4)


def test_the_plane_is_registered_once_per_skull(defective, monkeypatch):
    symmetry._plane_cache.clear()
    calls = []
    register = symmetry._register_mirror_plane

    def counted(skull, spacing_mm):
        calls.append(spacing_mm)
        return register(skull, spacing_mm)

    monkeypatch.setattr(symmetry, "_register_mirror_plane", counted)
    first = symmetry.find_mirror_plane(defective)
    first.normal[:] = 0.0  # the caller's copy: the cache keeps its own
    again = symmetry.find_mirror_plane(defective)
    assert len(calls) == 1
    assert abs(np.linalg.norm(again.normal) - 1.0) < 1e-9
    symmetry.find_mirror_plane(defective, spacing_mm=6.0)  # other settings: registered again
    other = SkullImage(defective.mask.copy(), defective.origin, defective.spacing, defective.direction)
    np.testing.assert_array_equal(symmetry.find_mirror_plane(other).normal, again.normal)  # same bone
    assert len(calls) == 3


def _turned(skull: SkullImage, degrees: float, axis: str) -> tuple[SkullImage, np.ndarray]:
    """(``skull`` turned by ``degrees`` about the LPS ``axis`` ("y": rolled, "z": turned left or right)
    through its grid's centre, on the same grid; the unit normal its mid-plane x = centre then has)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rot = {
        "y": np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]),
        "z": np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]),
    }[axis]
    img = skull.to_sitk()
    centre = img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()])
    tx = sitk.AffineTransform(3)
    tx.SetCenter(centre)
    tx.SetMatrix(tuple(rot.T.ravel()))  # output point p reads the input at R⁻¹ (p - c) + c: the head turns by R
    out = sitk.GetArrayFromImage(sitk.Resample(img, img, tx, sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0)
    return SkullImage(out.astype(bool), skull.origin, skull.spacing, skull.direction), rot @ np.array([1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("degrees", "axis"),
    [
        (0.0, "y"),
        (10.0, "y"),
        (-14.0, "y"),
        (20.0, "y"),
        (-25.0, "y"),
        (30.0, "y"),
        (40.0, "y"),
        (30.0, "z"),
        (-45.0, "z"),
        (60.0, "z"),
        (-75.0, "z"),
    ],
)
def test_a_head_rolled_or_turned_in_the_scan_gets_its_own_plane(degrees, axis):
    # before, the optimiser stopped at SimpleITK's gradient tolerance within a few steps of x = const;
    # then, started from x = const alone, a head rolled 20-30° kept a plane 13-30° off
    phantom = make_phantom(2, (96, 96, 72), (2.2, 2.2, 2.2))
    turned, truth = _turned(phantom, degrees, axis)
    symmetry._plane_cache.clear()
    normal = symmetry.find_mirror_plane(turned).normal
    assert np.rad2deg(np.arccos(min(1.0, abs(float(normal @ truth))))) < 1.5


@pytest.mark.parametrize(("yaw", "roll"), [(8.0, 0.0), (-6.0, 5.0), (25.0, 0.0)])
def test_the_plane_turns_with_the_head(defective, yaw, roll):
    # the same voxels under a turned header: the plane must turn with them, not stop where the optimiser
    # happens to stop (a minimum step of 1e-2 left planes of one SkullFix skull up to 2.9° apart)
    cz, sz, cy, sy = (
        np.cos(np.deg2rad(yaw)),
        np.sin(np.deg2rad(yaw)),
        np.cos(np.deg2rad(roll)),
        np.sin(np.deg2rad(roll)),
    )
    rot = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
        [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]]
    )
    centre = defective.index_to_physical()[:3, :3] @ (np.array(defective.shape) / 2.0) + defective.origin
    turned = SkullImage(
        defective.mask, rot @ (defective.origin - centre) + centre, defective.spacing, rot @ defective.direction
    )
    symmetry._plane_cache.clear()
    before = symmetry.find_mirror_plane(defective)
    symmetry._plane_cache.clear()
    after = symmetry.find_mirror_plane(turned)
    assert np.rad2deg(np.arccos(min(1.0, abs(float(after.normal @ (rot @ before.normal)))))) < 0.3
    assert abs(float((rot @ (before.point - centre) + centre - after.point) @ after.normal)) < 0.2  # mm


@pytest.mark.parametrize("seed", [1, 3])
def test_a_child_size_skull_gets_its_plane_as_exactly_as_an_adult(seed):
    # the same skull at 0.7 of its size (its header's spacing scaled, the same voxels): on the fixed 4 mm grid it
    # spanned fewer cells and its plane came out 0.13-0.19° off x = const (a vault defect lost 0.008 DSC on
    # validation's skulls so scaled); on a grid finer by its size's ratio it lies as at adult size (0.05-0.07°)
    phantom = make_phantom(seed, (96, 96, 72), (2.2, 2.2, 2.2))
    child = SkullImage(phantom.mask, phantom.origin * 0.7, phantom.spacing * 0.7, phantom.direction)
    angles = []
    for skull in (phantom, child):
        symmetry._plane_cache.clear()
        normal = symmetry.find_mirror_plane(skull).normal
        angles.append(np.degrees(np.arccos(min(1.0, abs(float(normal[0]))))))
    assert angles[1] < 0.1
    assert abs(angles[1] - angles[0]) < 0.03


def test_an_adult_size_skull_keeps_the_given_grid(defective, monkeypatch):
    seen = []
    smoothed = symmetry._smoothed
    monkeypatch.setattr(
        symmetry, "_smoothed", lambda skull, spacing_mm: seen.append(spacing_mm) or smoothed(skull, spacing_mm)
    )
    symmetry._plane_cache.clear()
    symmetry.find_mirror_plane(defective)
    small = SkullImage(defective.mask, defective.origin * 0.5, defective.spacing * 0.5, defective.direction)
    symmetry._plane_cache.clear()
    symmetry.find_mirror_plane(small)
    assert seen[0] == symmetry.DEFAULT_SPACING_MM
    size = symmetry.skull_size_mm(bone_points(small))
    assert 30.0 < size < symmetry.ADULT_SIZE_MM
    assert seen[1] == pytest.approx(symmetry.DEFAULT_SPACING_MM * size / symmetry.ADULT_SIZE_MM)
