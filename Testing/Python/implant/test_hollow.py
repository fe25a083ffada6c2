"""A hollow skull mask (`implant/hollow.py`): its vault's outer table apart from bone under it, named to the user."""

from __future__ import annotations

import pytest
from scipy import ndimage

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant import raycast
from SkullVAELib.implant.hollow import HOLLOW_RAYS, hollow_note, hollow_share
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings


@pytest.fixture(scope="module")
def solid_and_hollow():
    """A phantom's defective skull at 1 mm, and the same with only 1.5 mm of each face kept (its tables: the
    diploë between them left out, as a CT thresholded above it gives)."""
    defective, _ = cranial_defect(make_phantom(3, (200, 200, 150), None), 1, style="skullfix")
    depth = ndimage.distance_transform_edt(defective.mask, sampling=defective.spacing)
    return defective, defective.with_mask(defective.mask & (depth <= 1.5))


def test_bone_under_the_outer_table_is_measured_on_the_vault(solid_and_hollow):
    solid, hollow = solid_and_hollow
    assert hollow_share(solid, raycast.cast(solid, step_deg=1.5)) < 0.05  # under a solid vault lies the brain
    assert hollow_share(hollow, raycast.cast(hollow, step_deg=1.5)) > 0.8


def test_rays_that_leave_the_grid_under_the_table_read_no_bone(solid_and_hollow):
    _, hollow = solid_and_hollow
    rays = raycast.cast(hollow, step_deg=3.0)
    rays.r_in = rays.r_in + 500.0  # every sample far outside the scan
    assert hollow_share(hollow, rays) == 0.0


def test_the_note_names_the_share_over_the_bar():
    assert hollow_note(HOLLOW_RAYS) == []
    (note,) = hollow_note(0.62)
    assert "62 %" in note and "hollow" in note and "give the CT itself" in note
    assert "--hu-threshold" in hollow_note(0.62, "ct")[0]


def test_a_hollow_mask_is_completed_with_a_warning_and_a_solid_one_without(solid_and_hollow):
    solid, hollow = solid_and_hollow
    completer = Completer(CompletionSettings())
    assert not any("hollow" in w for w in completer.complete(solid).warnings)
    assert any("reads hollow" in w for w in completer.complete(hollow).warnings)
