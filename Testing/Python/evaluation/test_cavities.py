"""The true implant's own cavities (``evaluation.cavities``): a void enclosed in the removed bone is
found; the skull's hollow, the air outside and a void that opens to either are not."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.evaluation.cavities import enclosed_cavities
from SkullVAELib.evaluation.metrics import hd95


def _plate() -> tuple[np.ndarray, np.ndarray]:
    """(implant, bone) on a 40³ grid: a bone plate 8 voxels thick (z 16-23) with a square piece cut
    out of it (x, y 12-27: the implant), air above and below."""
    bone = np.zeros((40, 40, 40), dtype=bool)
    bone[:, :, 16:24] = True
    implant = np.zeros_like(bone)
    implant[12:28, 12:28, 16:24] = True
    bone &= ~implant
    return implant, bone


def test_a_void_inside_the_removed_bone_is_a_cavity():
    implant, bone = _plate()
    implant[18:22, 18:22, 19:21] = False  # a diploic void, closed on every side
    cavity = enclosed_cavities(implant, bone)
    assert cavity.sum() == 4 * 4 * 2
    assert cavity[18:22, 18:22, 19:21].all()
    assert not (cavity & (implant | bone)).any()


def test_a_void_that_opens_to_the_air_or_straddles_the_rim():
    implant, bone = _plate()
    bone[9:11, 14:16, 19:21] = False  # a void in the patient's bone, a voxel from the implant: not its own
    implant[18:22, 18:22, 21:24] = False  # a pit open to the air above
    implant[10:14, 24:26, 19:21] = False  # a void across the rim: implant on one side, bone on the other
    bone[10:14, 24:26, 19:21] = False
    cavity = enclosed_cavities(implant, bone)
    assert not cavity[9:11, 14:16].any()
    assert not cavity[18:22, 18:22].any()
    assert cavity[10:14, 24:26, 19:21].all() and cavity.sum() == 4 * 2 * 2


def test_filling_the_cavities_removes_their_walls_from_the_surface_distance():
    implant, bone = _plate()
    truth = implant.copy()
    truth[17:23, 17:23, 18:22] = False  # a large void in the true implant
    solid = implant  # what a source gives: the piece, solid
    assert hd95(solid, truth) > 1.0  # the void's walls lie up to 3 voxels from the solid's surface
    assert hd95(solid, truth | enclosed_cavities(truth, bone)) == 0.0


def test_no_implant_no_cavity_and_grids_must_match():
    implant, bone = _plate()
    assert not enclosed_cavities(np.zeros_like(implant), bone).any()
    with pytest.raises(ValueError, match="one grid"):
        enclosed_cavities(implant, bone[:-1])
