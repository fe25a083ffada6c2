"""A case as a coarser scan would show it (``evaluation.resolution``): the box, the direction and the
masks' relations survive; bad spacings are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.implants import DefectCase
from SkullVAELib.evaluation.resolution import coarser_case, coarser_grid, parse_spacing
from SkullVAELib.io.image import SkullImage


@pytest.fixture(scope="module")
def case() -> DefectCase:
    """A vault defect of a phantom on an oblique grid of 1.5 mm voxels."""
    phantom = make_phantom(1, (80, 80, 64), (1.5, 1.5, 1.5))
    angle = np.deg2rad(20.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    oblique = SkullImage(phantom.mask, phantom.origin, phantom.spacing, tilt)
    defective, implant = cranial_defect(oblique, 1, style="skullbreak")
    return DefectCase("p1", "vault", 1, defective, implant.mask, oblique.mask)


def _corners(image: SkullImage) -> np.ndarray:
    """(2, 3) LPS mm of the box's two outer corners (voxel edges, not centres)."""
    half = image.direction @ (image.spacing / 2.0)
    far = image.origin + image.direction @ ((np.array(image.shape) - 1) * image.spacing)
    return np.stack([image.origin - half, far + half])


def test_the_coarser_grid_keeps_the_box_and_the_direction(case):
    coarse = coarser_case(case, (3.0, 3.0, 4.5))
    assert coarse.defective.shape == (40, 40, 21)
    np.testing.assert_allclose(coarse.defective.spacing, [3.0, 3.0, 4.5])
    np.testing.assert_allclose(coarse.defective.direction, case.defective.direction, atol=1e-12)
    np.testing.assert_allclose(_corners(coarse.defective)[0], _corners(case.defective)[0], atol=1e-9)
    # the far corner moves by less than half a coarse voxel (the sizes are rounded)
    assert np.all(np.abs(_corners(coarse.defective)[1] - _corners(case.defective)[1]) <= 4.5 / 2 + 1e-9)


def test_the_masks_keep_their_volumes_and_the_implant_stays_off_the_bone(case):
    coarse = coarser_case(case, (1.5, 1.5, 4.5))
    assert not (coarse.implant & coarse.defective.mask).any()
    for fine, rough in ((case.implant, coarse.implant), (case.complete, coarse.complete)):
        fine_ml = fine.sum() * case.defective.voxel_volume_mm3
        rough_ml = rough.sum() * coarse.defective.voxel_volume_mm3
        assert rough_ml == pytest.approx(fine_ml, rel=0.15)
    # the coarse complete skull holds the coarse defective skull and the implant
    assert not (coarse.defective.mask & ~coarse.complete).sum() > 0.01 * coarse.defective.mask.sum()


def test_the_same_spacing_gives_the_same_masks(case):
    same = coarser_case(case, case.defective.spacing)
    np.testing.assert_array_equal(same.defective.mask, case.defective.mask)
    np.testing.assert_array_equal(same.implant, case.implant)


@pytest.mark.parametrize("text", ["", "1x2", "0x1x1", "-1", "nan", "1x1xinf", "axbxc"])
def test_a_bad_spacing_is_refused_in_one_line(text):
    with pytest.raises(SkullVAEError, match="positive millimetres") as err:
        parse_spacing(text)
    assert "\n" not in str(err.value)


def test_spacings_parse_and_a_grid_needs_three(case):
    assert parse_spacing("1x1x3") == (1.0, 1.0, 3.0)
    assert parse_spacing("2") == (2.0, 2.0, 2.0)
    with pytest.raises(SkullVAEError):
        coarser_grid(case.defective, (1.0, 0.0, 1.0))
