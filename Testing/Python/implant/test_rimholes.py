"""The skull's holes as the rim fit and the quality score see them (implant/rimholes.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SkullVAELib.implant import raycast
from SkullVAELib.implant.check import check_implant
from SkullVAELib.implant.gridturn import pole_clearance_deg
from SkullVAELib.implant.quality import QualityConfig, implant_quality
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.rimgrow import rim_ring
from SkullVAELib.implant.rimholes import (
    holes_in_frame,
    rim_spread_mm,
    without_gaps_off_the_shell,
    without_small_far_holes,
)
from SkullVAELib.implant.scanedge import cell_solid_angle
from SkullVAELib.io.image import SkullImage

STEP = RimFitConfig().step_deg
CENTRE = np.array([3.0, -2.0, 5.0])


def _disc_hole(direction, radius_deg: float, step_deg: float = 0.75) -> Hole:
    """A hole of the rays within ``radius_deg`` of the unit LPS ``direction`` (3,) on the rim fit's grid."""
    direction = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    cells = raycast.grid_directions(step_deg) @ direction >= np.cos(np.deg2rad(radius_deg))
    sr = float(np.broadcast_to(cell_solid_angle(step_deg), cells.shape)[cells].sum())
    return Hole(cells, sr, direction)


def test_a_small_gap_far_from_the_defect_is_not_filled_and_said_so():
    """A 5° gap 45° from a 22° defect (the temporal squama lost on 3 mm slices) is left out with a
    message; one beside the defect (an irregular outline split by a bridge of bone) and a large
    second defect far away are kept; 0 turns the rule off."""
    main = _disc_hole([0.0, 0.2, 1.0], 22.0)
    far_gap = _disc_hole([0.9, 0.2, 0.4], 5.0)
    near_gap = _disc_hole([0.0, 0.2 + np.tan(np.deg2rad(27.0)), 1.0], 4.0)  # its nearest ray ~1° off the rim
    second_defect = _disc_hole([-0.9, 0.2, 0.4], 12.0)
    assert far_gap.solid_angle_sr < 0.1 * main.solid_angle_sr <= second_defect.solid_angle_sr
    kept, notes = without_small_far_holes([main, far_gap, near_gap, second_defect], RimFitConfig())
    assert kept == [main, near_gap, second_defect]
    assert len(notes) == 1 and "not filled" in notes[0] and "\n" not in notes[0]
    everything, none = without_small_far_holes([main, far_gap], RimFitConfig(far_hole_share=0.0))
    assert everything == [main, far_gap] and none == []


def _from_pole(degrees: float) -> np.ndarray:
    """The unit direction ``degrees`` up (towards +z) from the posterior pole (+y)."""
    return Rotation.from_euler("x", degrees, degrees=True).apply([0.0, 1.0, 0.0])


def _shell_grid(shape: tuple[int, int, int] = (86, 86, 86)):
    """(origin, spacing, offsets (N, 3) mm from ``CENTRE``, their lengths (N,), their unit directions (N, 3), a 6 mm
    shell of 56 mm outer radius about ``CENTRE`` (``shape`` bool)) on a 1.5 mm grid of ``shape`` whose 86 voxels per
    axis would centre on ``CENTRE`` (fewer cut the shell)."""
    spacing = np.full(3, 1.5)
    origin = CENTRE - spacing * 85 / 2.0
    offsets = np.indices(shape).reshape(3, -1).T * spacing + origin - CENTRE
    radius = np.linalg.norm(offsets, axis=1)
    unit = offsets / np.maximum(radius, 1e-9)[:, None]
    return origin, spacing, offsets, radius, unit, ((radius >= 50.0) & (radius <= 56.0)).reshape(shape)


@pytest.fixture(scope="module")
def pole_hole_and_gap() -> tuple[SkullImage, np.ndarray]:
    """(defective, the true implant of its defect): a 6 mm shell of 56 mm outer radius about ``CENTRE`` on a
    1.5 mm grid, with a 22 mm defect 12° above the posterior pole (the grid's pole inside its rim) and a
    5.5° gap on the left side, 80° away (thin bone: a gap the rim fit leaves out)."""
    shape = (86, 86, 86)
    origin, spacing, offsets, radius, unit, shell = _shell_grid(shape)
    defect = (np.linalg.norm(offsets - 56.0 * _from_pole(12.0), axis=1) <= 22.0).reshape(shape)
    left = np.array([1.0, 0.0, 0.3]) / np.linalg.norm([1.0, 0.0, 0.3])
    gap = (unit @ left >= np.cos(np.deg2rad(5.5))).reshape(shape)
    defective = SkullImage(shell & ~defect & ~gap, origin, spacing, np.eye(3))
    return defective, shell & defect


def test_the_holes_are_searched_in_a_frame_off_the_poles_as_the_rim_fit_fills_them(pole_hole_and_gap):
    """The defect holds the grid's pole as cast: the search turns the frame until its rays clear the poles
    by the rim fit's clearance, on the same voxels, and the rim fit fills it in that very frame."""
    defective, _ = pole_hole_and_gap
    timings: dict[str, float] = {}
    found = holes_in_frame(defective, CENTRE, RimFitConfig(), timings=timings)
    assert found.turn is not None and found.turn.degrees > 0
    assert found.skull.mask is defective.mask  # the header turned, the voxels the input's
    assert pole_clearance_deg(found.holes[0].cells, STEP) >= 13.5 - STEP
    assert found.opening_cells() is not None and found.raymap.hit.shape == found.holes[0].cells.shape
    assert timings["raycast"] > 0 and timings["holes"] > 0
    filled = rim_fit(defective, centre=CENTRE)
    assert filled.turn is not None and filled.turn.degrees == pytest.approx(found.turn.degrees)
    as_cast = holes_in_frame(defective, CENTRE, RimFitConfig(pole_clearance_deg=0.0))
    assert as_cast.turn is None and as_cast.opening_cells() is None
    assert pole_clearance_deg(as_cast.holes[0].cells, STEP) == 0.0


def test_a_small_far_gap_is_no_hole_to_cover_for_the_rim_fit_nor_the_quality_score(pole_hole_and_gap):
    """The rim fit's search drops the far gap with a note, and the quality score asks an implant to cover the
    holes the rim fit fills: the defect's own implant covers all of them. Counted on request, the gap makes
    that implant cover less than all."""
    defective, truth = pole_hole_and_gap
    filled = holes_in_frame(defective, CENTRE, RimFitConfig())
    every = holes_in_frame(defective, CENTRE, RimFitConfig(), leave_out_far_gaps=False)
    assert len(filled.holes) == 1 and len(filled.notes) == 1 and "not filled" in filled.notes[0]
    assert len(every.holes) == 2 and every.notes == []
    assert every.holes[1].solid_angle_sr < 0.1 * every.holes[0].solid_angle_sr
    quality = implant_quality(defective, truth, centre=CENTRE)
    assert quality.measures["coverage"] == pytest.approx(1.0)
    counted = implant_quality(defective, truth, QualityConfig(count_far_gaps=True), centre=CENTRE)
    assert 0.9 < counted.measures["coverage"] < 1.0
    assert counted.score < quality.score
    no_rule = implant_quality(defective, truth, centre=CENTRE, rim=RimFitConfig(far_hole_share=0.0))  # the user's rule
    assert no_rule.measures["coverage"] == pytest.approx(counted.measures["coverage"])


@pytest.fixture(scope="module")
def top_cut_scan() -> tuple[SkullImage, np.ndarray]:
    """(defective, the true implant): the shell of ``pole_hole_and_gap`` with a small defect (8° about a left,
    slightly raised direction: 0.05 sr, under a tenth of the cut's solid angle, 43° from it) in a scan whose
    field of view stops 44 mm above the centre, inside the vertex's inner table: the cut top is an enclosed group
    of rays the scan cannot see, larger than the defect."""
    shape = (86, 86, 73)
    origin, spacing, _, radius, unit, shell = _shell_grid(shape)
    left = np.array([1.0, 0.0, 0.2]) / np.linalg.norm([1.0, 0.0, 0.2])
    defect = ((unit @ left >= np.cos(np.deg2rad(8.0))) & (radius >= 45.0)).reshape(shape)
    return SkullImage(shell & ~defect, origin, spacing, np.eye(3)), shell & defect


def test_the_scans_cut_is_never_the_main_hole(top_cut_scan):
    """A hole whose every ray the scan cannot see (its cut through the vertex) is listed after the defect, so the
    defect is not taken for a small far gap of it: the rim fit fills the defect, lists only the hole it filled (no
    volume check against the cut), and the quality score asks an implant to cover the defect. Before, the cut
    was the main hole: the defect was left out as thin bone and the implant was empty."""
    defective, truth = top_cut_scan
    found = holes_in_frame(defective, CENTRE, RimFitConfig())
    assert len(found.holes) == 2 and found.notes == []
    defect, cut = found.holes
    assert (defect.cells & ~found.edge.unknown).any() and not (cut.cells & ~found.edge.unknown).any()
    assert defect.solid_angle_sr < 0.1 * cut.solid_angle_sr
    filled = rim_fit(defective, centre=CENTRE)
    dice = 2 * np.count_nonzero(filled.implant & truth) / (filled.implant.sum() + truth.sum())
    assert dice > 0.9 and not (filled.implant & defective.mask).any()
    assert [h.solid_angle_sr for h in filled.holes] == [pytest.approx(defect.solid_angle_sr)]
    assert any("only the scan's edge" in m for m in filled.messages)
    assert check_implant(filled.implant, defective.voxel_volume_mm3, filled.holes) == []
    half = truth & (np.indices(truth.shape)[2] * 1.5 + defective.origin[2] > CENTRE[2] + 10.0)
    assert 0 < half.sum() < truth.sum()
    assert (
        implant_quality(defective, half, centre=CENTRE).score
        < 0.5
        < implant_quality(defective, truth, centre=CENTRE).score
    )


def test_a_turned_frame_keeps_the_skull_bases_rays_open(pole_hole_and_gap):
    """A scan whose tilted lower face cuts the occiput below and behind (rays 22-54° under the horizontal leave
    it before the bone) with the pole hole: turned off the pole, the grid still reads "below the horizontal" in
    LPS, so the cut skull base stays an opening and no second hole appears (before: a 0.25 sr false hole that the
    rim fit then called only the scan's edge)."""
    spacing, depth = 1.5, 48.0
    direction = Rotation.from_euler("x", 52, degrees=True).as_matrix()
    shape = (86, 86, int((depth + 62) / spacing))
    centre_index = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, depth / spacing])
    origin = CENTRE - direction @ (centre_index * spacing)
    offsets = (np.indices(shape).reshape(3, -1).T * spacing) @ direction.T + origin - CENTRE
    radius = np.linalg.norm(offsets, axis=1)
    shell = ((radius >= 50) & (radius <= 56)).reshape(shape)
    defect = (np.linalg.norm(offsets - 56 * _from_pole(12.0), axis=1) <= 22).reshape(shape)
    skull = SkullImage(shell & ~defect, origin, np.full(3, spacing), direction)
    as_cast = holes_in_frame(skull, CENTRE, RimFitConfig(pole_clearance_deg=0.0))
    turned = holes_in_frame(skull, CENTRE, RimFitConfig())
    assert turned.turn is not None and turned.turn.degrees > 10
    assert len(as_cast.holes) == len(turned.holes) == 1
    assert turned.holes[0].solid_angle_sr == pytest.approx(as_cast.holes[0].solid_angle_sr, rel=0.05)
    assert np.allclose(turned.raymap.up, turned.turn.rotation @ [0.0, 0.0, 1.0])


def _shell_with_second_hole(deep_plate: bool) -> tuple[SkullImage, np.ndarray, np.ndarray]:
    """(defective, the true implant of its vault defect, the second hole's cone of directions (I, J, K) bool): the
    6 mm shell of ``pole_hole_and_gap`` with a 25° defect over the back of the vertex and a 17° hole 30° below the
    horizontal, forward and to the left, 90° from it. With ``deep_plate`` the shell is gone from all but the top
    quarter of a 27° cone about the second hole too, and six plates 18 and 46 mm from the centre, in turn, lie there
    instead: the rays about that hole meet the shell above it and bone at two depths below it, as the rays about the
    orbits' lost roofs meet the frontal bone, what is left of the roofs and the bone deep under the orbits."""
    shape = (86, 86, 86)
    origin, spacing, _, radius, unit, shell = _shell_grid(shape)
    vertex = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])
    defect = ((unit @ vertex >= np.cos(np.deg2rad(25.0))) & (radius >= 45.0)).reshape(shape)
    gap_dir = np.array([0.5, -0.7, -0.5]) / np.linalg.norm([0.5, -0.7, -0.5])
    cos_gap = unit @ gap_dir
    gap = (cos_gap >= np.cos(np.deg2rad(17.0))).reshape(shape)
    bone = shell & ~defect & ~gap
    if deep_plate:
        below = np.cross(np.cross(gap_dir, [0.0, 0.0, -1.0]), gap_dir)  # the cone's downward side
        below /= np.linalg.norm(below)
        aside = np.degrees(np.arctan2(unit @ np.cross(gap_dir, below), unit @ below))  # azimuth from "below"
        lower_half = ((cos_gap >= np.cos(np.deg2rad(27.0))) & (np.abs(aside) < 135.0)).reshape(shape)
        depth = np.where(np.floor(aside / 45.0) % 2 == 0, 18.0, 46.0)  # six plates, as broken as a lost roof's rim
        plate = lower_half & ~gap & ((radius >= depth - 2.0) & (radius <= depth + 2.0)).reshape(shape)
        bone = (bone & ~lower_half) | plate
    return SkullImage(bone, origin, spacing, np.eye(3)), shell & defect, gap


@pytest.mark.parametrize("deep_plate", [True, False])
def test_a_far_gap_whose_rim_lies_in_no_shell_is_not_filled_and_a_second_defect_is(deep_plate):
    """The second hole is over a tenth of the defect's solid angle and far from it, so the small far gap's rule keeps
    it. Where its rim lies on the shell and the plates (≈ 23 mm about its trend), the search leaves it out with one
    note, the rim fit fills the defect alone and the quality score asks it to cover the defect alone;
    with the rule off (``gap_rim_spread_mm`` 0) the rim fit puts a plate 60 mm from the defect, as it did before.
    The rule reads only gaps far from the defect, and no rim rays that the scan's edge cut (fewer than 3 left: kept).
    In the shell alone (a second defect) it is filled, rule or not."""
    defective, truth, gap = _shell_with_second_hole(deep_plate)
    found = holes_in_frame(defective, CENTRE, RimFitConfig())
    every = holes_in_frame(defective, CENTRE, RimFitConfig(), leave_out_far_gaps=False)
    assert len(every.holes) == 2 and every.holes[1].solid_angle_sr > 0.1 * every.holes[0].solid_angle_sr
    spread = rim_spread_mm(every.raymap, every.holes[1], RimFitConfig())
    assert (spread > 18.0) == deep_plate and rim_spread_mm(every.raymap, every.holes[0], RimFitConfig()) < 5.0
    filled = rim_fit(defective, centre=CENTRE)
    off = rim_fit(defective, RimFitConfig(gap_rim_spread_mm=0.0), centre=CENTRE)
    assert np.count_nonzero(off.implant & gap) > 0.15 * np.count_nonzero(truth)  # filled without the rule
    if deep_plate:
        assert len(found.holes) == 1 and len(found.notes) == 1 and "no shell" in found.notes[0]
        assert "\n" not in found.notes[0] and any("no shell" in m for m in filled.messages)
        assert not (filled.implant & gap).any() and len(filled.holes) == 1
        dice = 2 * np.count_nonzero(filled.implant & truth) / (filled.implant.sum() + truth.sum())
        assert dice > 0.9
        assert implant_quality(defective, truth, centre=CENTRE).measures["coverage"] == pytest.approx(1.0)
        # only a gap far from the defect: the same hole within far_hole_deg of it is kept; 0 turns the rule off
        near = without_gaps_off_the_shell(every.holes, every.raymap, RimFitConfig(far_hole_deg=100.0))
        assert near == (every.holes, [])
        assert without_gaps_off_the_shell(every.holes, every.raymap, RimFitConfig(far_hole_deg=0.0))[0] == every.holes
        # bone cut by the scan's edge is no rim data: with all but three of its rim rays so, there is no spread
        rim = rim_ring(every.raymap, every.holes[1].cells, RimFitConfig())
        unusable = rim.copy()
        unusable[tuple(np.argwhere(rim)[:2].T)] = False
        assert np.isnan(rim_spread_mm(every.raymap, every.holes[1], RimFitConfig(), unusable))
        assert without_gaps_off_the_shell(every.holes, every.raymap, RimFitConfig(), unusable)[0] == every.holes
    else:
        assert len(found.holes) == 2 and found.notes == []
        assert np.array_equal(filled.implant, off.implant)
