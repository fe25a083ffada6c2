"""The rim fit checked on the patient's intact vault (:mod:`SkullVAELib.implant.selfcheck`), in ray space:
synthetic ray maps of a shell with a hole, no voxels."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.scanedge import cell_solid_angle
from SkullVAELib.implant.selfcheck import (
    DISTANCES_DEG,
    SelfCheck,
    intact_places,
    interval_dsc,
    moved_cells,
    moves,
    self_check,
    usable_place,
)

STEP = raycast.RIM_STEP_DEG
HOLE_DIRECTION = np.array([0.0, 0.3, 0.95]) / np.linalg.norm([0.0, 0.3, 0.95])  # the upper vault, to the back


def _hole(radius_deg: float = 18.0) -> Hole:
    cells = raycast.grid_directions(STEP) @ HOLE_DIRECTION >= np.cos(np.deg2rad(radius_deg))
    sr = float(np.broadcast_to(cell_solid_angle(STEP), cells.shape)[cells].sum())
    return Hole(cells, sr, HOLE_DIRECTION.copy())


def _shell(hole: Hole, bumps_mm: float = 0.0) -> raycast.RayMap:
    """A shell of outer radius 90 mm (± ``bumps_mm`` of waves about 40° long) and 6 mm bone; the hole's
    rays miss."""
    dirs = raycast.grid_directions(STEP)
    r_out = 90.0 + bumps_mm * np.sin(4.5 * np.pi * dirs[..., 0]) * np.sin(4.5 * np.pi * dirs[..., 1])
    r_out = r_out.astype(np.float32)
    r_in = r_out - 6.0
    r_out[hole.cells] = np.nan
    r_in[hole.cells] = np.nan
    return raycast.RayMap(np.zeros(3), STEP, ~hole.cells, r_out, r_in)


def test_a_hole_moved_keeps_its_size_and_lands_as_far_as_asked():
    hole = _hole()
    omega = np.broadcast_to(cell_solid_angle(STEP), hole.cells.shape)
    rotations = moves(hole.direction)
    assert len(rotations) >= 8 * len(DISTANCES_DEG) // 2
    for rotation, distance in zip(rotations[:8], [DISTANCES_DEG[0]] * 8, strict=True):
        cells = moved_cells(hole.cells, STEP, rotation)
        assert omega[cells].sum() == pytest.approx(hole.solid_angle_sr, rel=0.03)
        centre = (raycast.grid_directions(STEP)[cells] * omega[cells][:, None]).sum(axis=0)
        angle = np.degrees(np.arccos(np.clip(centre @ hole.direction / np.linalg.norm(centre), -1, 1)))
        assert angle == pytest.approx(distance, abs=1.5)


def test_a_place_on_the_defect_or_below_the_vault_is_not_used():
    hole = _hole()
    raymap = _shell(hole)
    cfg = RimFitConfig()
    assert not usable_place(hole.cells, raymap, hole.cells, cfg)  # the defect itself
    below = raycast.grid_directions(STEP)[..., 2] < -0.6  # the skull base's rays
    assert not usable_place(below, raymap, np.zeros_like(below), cfg)


def test_the_interval_dsc_of_a_shell_against_itself_and_a_shifted_one():
    omega = np.ones(4)
    inner, outer = np.full(4, 84.0), np.full(4, 90.0)
    assert interval_dsc(inner, outer, inner, outer, omega) == pytest.approx(1.0)
    assert interval_dsc(inner + 3.0, outer + 3.0, inner, outer, omega) == pytest.approx(0.5, abs=0.03)
    assert np.isnan(interval_dsc(inner, inner, inner, inner, omega))  # no volume on either side


def test_a_smooth_vault_checks_near_perfect_and_a_bumpy_one_lower():
    """On a sphere the spline from any rim is exact, so every place scores ≈ 1; on a vault with bumps the
    size of the hole the fill misses them, and the check says so."""
    hole = _hole()
    smooth = self_check(_shell(hole), hole, RimFitConfig())
    bumpy = self_check(_shell(hole, bumps_mm=3.0), hole, RimFitConfig())
    assert smooth.places >= 3 and bumpy.places >= 3
    assert len(smooth.scores) == smooth.places and len(smooth.outer_rms_mm) == smooth.places
    assert smooth.dsc > 0.98
    assert max(smooth.outer_rms_mm) < 0.3
    assert bumpy.dsc < smooth.dsc - 0.05
    assert np.median(bumpy.outer_rms_mm) > 0.5
    alone = self_check(_shell(hole, bumps_mm=3.0), hole, RimFitConfig(), threads=1)
    assert alone.scores == bumpy.scores  # the places filled one at a time or side by side: the same check


def test_a_skull_with_no_intact_place_gets_no_estimate():
    hole = _hole(radius_deg=70.0)  # the hole covers most of the upper vault
    check = self_check(_shell(hole), hole, RimFitConfig())
    assert check.places == 0 and np.isnan(check.dsc)


def test_a_place_keeps_the_holes_unusable_rays_out_of_its_rim():
    """Rays whose bone the scan's edge cuts are no rim data for the hole, nor for a place it is moved to."""
    hole = _hole()
    hole.unusable = np.zeros_like(hole.cells)
    hole.unusable[:10] = True  # a strip at the scan's edge
    places = intact_places(_shell(hole), hole, RimFitConfig())
    assert places and all(place.unusable is hole.unusable for place in places)


def test_the_note_says_how_many_places_and_when_they_are_too_few():
    assert "rough" in SelfCheck(scores=[0.8], outer_rms_mm=[1.0]).note()
    many = SelfCheck(scores=[0.9, 0.92, 0.93, 0.94, 0.95], outer_rms_mm=[0.5] * 5)
    assert "5 intact places" in many.note() and "0.90-0.95" in many.note() and "rough" not in many.note()
    assert many.summary() == {"dsc": 0.93, "places": 5, "lowest": 0.9, "highest": 0.95}
    assert SelfCheck().summary()["dsc"] is None and "could not be tried" in SelfCheck().note()


def test_below_the_vault_is_read_in_lps_when_the_grid_is_turned():
    """A ray map cast in a turned frame carries LPS's up: a place pointing along the frame's +y, level in the
    grid's own axes, lies under the skull base's limit once up is the frame's -y, and is no intact vault."""
    from dataclasses import replace

    hole = _hole()
    level = raycast.grid_directions(STEP) @ np.array([0.0, 1.0, 0.0]) >= np.cos(np.deg2rad(10.0))
    raymap = _shell(hole)
    keep_out = np.zeros_like(level)
    assert usable_place(level, raymap, keep_out, RimFitConfig())
    turned = replace(raymap, up=np.array([0.0, -1.0, 0.0]))
    assert not usable_place(level, turned, keep_out, RimFitConfig())
