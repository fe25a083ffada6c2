"""The skull's holes as the rim fit and the quality score see them (implant/rimholes.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SkullVAELib.implant import raycast
from SkullVAELib.implant.gridturn import pole_clearance_deg
from SkullVAELib.implant.quality import implant_quality
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.rimholes import holes_in_frame, without_small_far_holes
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


@pytest.fixture(scope="module")
def pole_hole_and_gap() -> tuple[SkullImage, np.ndarray]:
    """(defective, the true implant of its defect): a 6 mm shell of 56 mm outer radius about ``CENTRE`` on a
    1.5 mm grid, with a 22 mm defect 12° above the posterior pole (the grid's pole inside its rim) and a
    5.5° gap on the left side, 80° away (thin bone: a gap the rim fit leaves out)."""
    spacing, shape = np.full(3, 1.5), (86, 86, 86)
    origin = CENTRE - spacing * (np.array(shape) - 1) / 2.0
    offsets = np.indices(shape).reshape(3, -1).T * spacing + origin - CENTRE
    radius = np.linalg.norm(offsets, axis=1)
    unit = offsets / np.maximum(radius, 1e-9)[:, None]
    shell = ((radius >= 50.0) & (radius <= 56.0)).reshape(shape)
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


def test_the_rim_fit_leaves_a_small_far_gap_out_and_the_quality_score_counts_it(pole_hole_and_gap):
    """The rim fit's search drops the far gap with a note; the quality score's keeps every enclosed hole, so
    an implant of the defect alone covers less than all of the skull's holes."""
    defective, truth = pole_hole_and_gap
    filled = holes_in_frame(defective, CENTRE, RimFitConfig())
    every = holes_in_frame(defective, CENTRE, RimFitConfig(), leave_out_far_gaps=False)
    assert len(filled.holes) == 1 and len(filled.notes) == 1 and "not filled" in filled.notes[0]
    assert len(every.holes) == 2 and every.notes == []
    assert every.holes[1].solid_angle_sr < 0.1 * every.holes[0].solid_angle_sr
    quality = implant_quality(defective, truth, centre=CENTRE)
    assert 0.9 < quality.measures["coverage"] < 1.0
