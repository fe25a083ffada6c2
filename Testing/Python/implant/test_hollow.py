"""A hollow skull mask (`implant/hollow.py`): its vault's outer table apart from bone under it, its tables joined for
the rim fit, named to the user."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.bundle.folder import ModelFolder
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant import raycast
from SkullVAELib.implant.hollow import HOLLOW_RAYS, _closed_within, hollow_note, hollow_share, join_tables, table_gaps
from SkullVAELib.io.image import SkullImage, skull_from_image
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.context import CompletionContext
from SkullVAELib.pipeline.settings import CompletionSettings

TABLE_MM = 1.5


@pytest.fixture(scope="module")
def phantom():
    """(a phantom's defective skull at 1 mm, its true implant, the same skull with only ``TABLE_MM`` of each face
    kept: its tables, the diploë between them left out, as a CT thresholded above it gives)."""
    defective, implant = cranial_defect(make_phantom(3, (200, 200, 150), None), 1, style="skullfix")
    depth = ndimage.distance_transform_edt(defective.mask, sampling=defective.spacing)
    return defective, implant.mask, defective.with_mask(defective.mask & (depth <= TABLE_MM))


@pytest.fixture(scope="module")
def solid_and_hollow(phantom):
    return phantom[0], phantom[2]


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


def test_the_gap_under_the_outer_table_is_the_diploe_a_hollow_vault_lost(phantom):
    solid, _, hollow = phantom
    rays = raycast.cast(hollow, step_deg=1.5)
    gaps = table_gaps(hollow, rays)
    solid_rays = raycast.cast(solid, step_deg=1.5)
    vault = rays.hit & solid_rays.hit & (rays.elevation() >= 0.5) & np.isfinite(gaps)
    assert vault.sum() > 0.5 * (solid_rays.hit & (solid_rays.elevation() >= 0.5)).sum()
    # the inner table starts where the solid bone's last TABLE_MM begins, to a voxel and a sample
    lost = solid_rays.thickness[vault] - (rays.r_out - rays.r_in)[vault] - TABLE_MM
    assert np.median(np.abs(gaps[vault] - lost)) < 1.0
    assert np.isfinite(table_gaps(solid, solid_rays)[solid_rays.elevation() >= 0.5]).mean() < 0.05


def test_joined_tables_are_the_solid_bone_and_keep_every_voxel_of_the_hollow_one(phantom):
    solid, _, hollow = phantom
    joined = join_tables(hollow, raycast.cast(hollow, step_deg=1.5))
    assert np.all(joined[hollow.mask])
    upper = np.zeros_like(joined)
    upper[:, :, joined.shape[2] // 2 :] = True  # the vault's half of the grid
    assert dice(joined & upper, solid.mask & upper) > 0.95
    assert dice(hollow.mask & upper, solid.mask & upper) < 0.7
    assert hollow_share(hollow.with_mask(joined), raycast.cast(hollow.with_mask(joined), step_deg=1.5)) < 0.05


def test_a_solid_skull_is_left_as_it_is_by_the_join(phantom):
    solid, _, _ = phantom
    joined = join_tables(solid, raycast.cast(solid, step_deg=1.5))
    assert np.count_nonzero(joined & ~solid.mask) < 0.01 * np.count_nonzero(solid.mask)


def test_a_hollow_mask_gets_a_full_thickness_implant_off_its_bone_with_a_note(phantom):
    solid, truth, hollow = phantom
    result = Completer(CompletionSettings()).complete(hollow)
    assert dice(result.implant.mask, truth) > 0.85
    assert not np.any(result.implant.mask & hollow.mask)
    (note,) = [w for w in result.warnings if "reads hollow" in w]  # one note: the join's
    assert "was filled" in note
    assert np.array_equal(result.completed.mask & ~result.implant.mask, hollow.mask)  # the patient's bone as given


def test_without_the_join_a_hollow_mask_keeps_the_outer_tables_thickness_and_says_so(phantom):
    solid, truth, hollow = phantom
    rimfit = CompletionSettings().rimfit
    rimfit = dataclasses.replace(rimfit, config=dataclasses.replace(rimfit.config, join_hollow=False))
    result = Completer(CompletionSettings(rimfit=rimfit)).complete(hollow)
    assert dice(result.implant.mask, truth) < 0.7
    assert any("takes the outer table's thickness" in w for w in result.warnings)


def test_a_scan_whose_units_the_ct_reading_cannot_check_is_joined_by_the_rays(phantom):
    """A CBCT's own units (air at 0; the CT reading looks for a hollow bone only in HU): thresholded between the
    tables' and the diploë's values it reads hollow, and the rim fit joins its tables all the same."""
    solid, truth, hollow = phantom
    values = np.where(hollow.mask, 2600, np.where(solid.mask, 1200, 0)).astype(np.int16)
    skull = skull_from_image(solid.to_sitk(values, np.int16), "cbct.nrrd", kind="ct", hu_threshold=1300.0)
    assert np.array_equal(skull.mask, hollow.mask) and skull.metadata["hu_threshold"] == 1300.0
    result = Completer(CompletionSettings()).complete(skull)
    assert dice(result.implant.mask, truth) > 0.85
    (note,) = [w for w in result.warnings if "reads hollow" in w]
    assert "was filled" in note and "--hu-threshold" in note


def test_the_closing_is_a_balls_and_reads_no_bone_beyond_the_grid():
    """Blobs that reach the grid's faces: the closing is scipy's with a ball of 2 voxels on the grid padded with
    no bone (ITK's distance maps alone would read beyond the grid as bone and close against its faces)."""
    mask = ndimage.binary_dilation(np.random.default_rng(0).random((40, 36, 30)) > 0.99, iterations=2)
    mask[:, :, :3] |= mask[:, :, 3:6]  # bone on a face of the grid
    skull = SkullImage(mask, np.zeros(3), np.ones(3), np.eye(3))
    offsets = np.indices((5, 5, 5)) - 2
    ball = (offsets**2).sum(axis=0) <= 4
    expected = ndimage.binary_closing(np.pad(mask, 6), structure=ball)[6:-6, 6:-6, 6:-6]
    closed = _closed_within(mask, skull, tuple(slice(0, n) for n in mask.shape), 2.0)
    assert np.array_equal(closed, expected) and np.all(closed[mask]) and np.count_nonzero(closed & ~mask) > 0
    inner = (slice(5, 30), slice(4, 20), slice(6, 25))
    only_inside = _closed_within(mask, skull, inner, 2.0)
    assert np.array_equal(only_inside[inner], expected[inner]) and not only_inside.sum() - only_inside[inner].sum()


def test_a_cranial_implant_is_scored_against_the_joined_skull_whichever_source_asks_first(phantom):
    """A source before the rim fit (a model's, say) asks for its implant's quality: the rim fit, which joins the
    hollow skull's tables, runs first, so that every cranial score is made against the one skull."""
    _, truth, hollow = phantom
    context = CompletionContext(hollow, CompletionSettings(), ModelFolder(None), defect="cranial")
    context.implant_quality(truth)
    assert context.join_notes and "was filled" in context.join_notes[0]
    assert np.count_nonzero(context.vault_skull().mask) > 1.3 * np.count_nonzero(hollow.mask)


def test_a_join_that_leaves_the_vault_hollow_says_how_much(phantom, monkeypatch):
    """Where the join cannot fill the space (here: a join that changes nothing), the note says what still reads
    hollow; a join that works adds no such note."""
    from SkullVAELib.implant import hollow

    _, _, skull = phantom
    assert not any("still reads hollow" in w for w in Completer(CompletionSettings()).complete(skull).warnings)
    monkeypatch.setattr(hollow, "join_tables", lambda skull, rays: skull.mask.copy())
    result = Completer(CompletionSettings()).complete(skull)
    (note,) = [w for w in result.warnings if "still reads hollow" in w]
    assert "%" in note and "thinner than the bone around it" in note
