"""Growing a hole and its rim rays (:mod:`SkullVAELib.implant.rimgrow`), on ray maps made by hand:
the cells that join a hole, how far they reach, and the rays whose bone a cut wall thinned."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimconfig import RimFitConfig
from SkullVAELib.implant.rimgrow import grow_connected, grow_hole
from SkullVAELib.implant.rimholes import find_holes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_growing_from_the_hole_takes_the_cells_a_labelling_keeps(seed):
    """The hole grows through accepted cells next to it; the same cells as accepting the whole band
    and keeping its components that meet the hole (8-connected, no wrap), with fewer evaluations."""

    rng = np.random.default_rng(seed)
    cells = np.zeros((60, 90), dtype=bool)
    cells[25:35, 40:52] = True
    allowed = ndimage.binary_dilation(cells, np.ones((3, 3), bool), iterations=12) & ~cells
    allowed &= rng.random(cells.shape) > 0.1
    good = rng.random(cells.size) > 0.45
    asked = []

    def accept(idx):
        asked.append(len(idx))
        return good[idx]

    got = grow_connected(cells, allowed, accept)
    labels, _ = ndimage.label(cells | (allowed & good.reshape(cells.shape)), structure=np.ones((3, 3), bool))
    keep = np.unique(labels[cells])
    np.testing.assert_array_equal(got, np.isin(labels, keep[keep > 0]))
    assert got.sum() > cells.sum()
    assert sum(asked) < allowed.sum()  # only the cells next to the growing set were evaluated


def _sunken_sector_map(step_deg: float = 2.0):
    """A ray map of a 70 mm shell (6 mm thick) with a hole of 12° about a lateral-up direction and,
    next to it on its upper side, a sector 24° long whose outer bone lies 10 mm deep: (map, hole
    cells, sector cells)."""
    alpha, beta = raycast.angle_grid(step_deg)
    dirs = raycast.directions(alpha[:, None], beta[None, :])
    towards = np.array([0.8, 0.0, 0.6])  # LPS: left and up, away from the grid's poles and seam
    angle = np.degrees(np.arccos(np.clip(dirs @ towards, -1.0, 1.0)))
    hole = angle < 12.0
    side = dirs @ np.array([-0.6, 0.0, 0.8])  # up the vault, across the hole's direction
    across = np.abs(dirs @ np.array([0.0, 1.0, 0.0]))
    sector = ~hole & (angle < 36.0) & (side > 0.0) & (across < 0.12)
    r_out = np.where(sector, 60.0, 70.0).astype(np.float32)
    r_out[hole] = np.nan
    return raycast.RayMap(np.zeros(3), step_deg, ~hole, r_out, r_out - 6.0), hole, sector


@pytest.mark.parametrize("reach", [3, 20])
def test_a_hole_grows_no_further_than_its_reach(reach):
    """Rays next to the hole whose bone lies deep join it, through each other, but no further than
    ``grow_reach`` cells from the hole as found (a spline refitted on a moving ring can walk down a
    thin wall); the rim (14-20 cells out) sees only the shell, so every sector cell is deep."""

    raymap, hole_cells, sector = _sunken_sector_map()
    (hole,) = find_holes(raymap)
    np.testing.assert_array_equal(hole.cells, hole_cells)
    cfg = RimFitConfig(step_deg=2.0, ring=(14, 20), grow_reach=reach)
    grown = grow_hole(raymap, hole, cfg).cells & ~hole_cells
    within = ndimage.binary_dilation(hole_cells, np.ones((3, 3), bool), iterations=reach)
    assert grown.any() and not (grown & ~sector).any()  # only the deep rays join
    assert not (grown & ~within).any()
    if reach >= 20:
        np.testing.assert_array_equal(grown, sector & within)  # the whole sector, connected to the hole
    else:
        assert grown.sum() < sector.sum()


def _cut_wall_map(step_deg: float = 1.0, wedge_cells: int = 3):
    """A 70 mm shell whose thickness varies smoothly (5-7 mm) with a 12° hole; the rays up to
    ``wedge_cells`` cells outside the hole met a cut wall obliquely: 1 mm less outer radius and
    only a share of the bone, thinner nearer the hole. (map, hole cells, wedge cells)."""
    alpha, beta = raycast.angle_grid(step_deg)
    dirs = raycast.directions(alpha[:, None], beta[None, :])
    towards = np.array([0.8, 0.0, 0.6])
    hole = np.degrees(np.arccos(np.clip(dirs @ towards, -1.0, 1.0))) < 12.0
    wedge = np.zeros_like(hole)
    if wedge_cells:  # (iterations=0 dilates until nothing changes)
        wedge = ndimage.binary_dilation(hole, np.ones((3, 3), bool), iterations=wedge_cells) & ~hole
    thickness = (6.0 + dirs @ np.array([0.0, 1.0, 0.0])).astype(np.float32)  # 5-7 mm across the skull
    distance = ndimage.distance_transform_cdt(~hole, metric="chessboard")
    thickness[wedge] *= distance[wedge] / (wedge_cells + 1)  # the wall's wedge: thinner nearer the hole
    r_out = np.full(hole.shape, 70.0, dtype=np.float32)
    r_out[wedge] -= 1.0
    r_out[hole] = np.nan
    return raycast.RayMap(np.zeros(3), step_deg, ~hole, r_out, r_out - thickness), hole, wedge


@pytest.mark.parametrize("grow_thick_mm", [0.0, 2.0])
def test_rays_thinned_by_the_cut_wall_join_the_hole(grow_thick_mm):
    """Rays that hold only a wedge of the bone (thinner than the rim's thickness spline by more than
    ``grow_thick_mm``) join the hole; the smoothly varying shell beyond them never does; with 0 only
    the outer radius decides, and 1 mm shallower is not deep."""
    raymap, hole_cells, wedge = _cut_wall_map()
    (hole,) = find_holes(raymap)
    grown = grow_hole(raymap, hole, RimFitConfig(step_deg=1.0, grow_thick_mm=grow_thick_mm)).cells & ~hole_cells
    if grow_thick_mm == 0.0:
        assert not grown.any()
    else:
        assert not (grown & ~wedge).any()  # whole bone stays rim
        thin = wedge & (raymap.thickness < 6.0 - 1.0 - grow_thick_mm)  # thinner than any whole bone by more
        assert (grown >= thin).all() and thin.any()


@pytest.mark.parametrize("wedge_cells", [0, 3, 8])
def test_the_rim_drops_the_rays_a_cut_wall_thinned(wedge_cells):
    """With ``trim_mm`` the rim rays in the cut wall's wedge (thinner than the whole bone beyond the
    ring) are no rim data, whatever the wedge's width; whole bone of any thickness stays; 0 keeps the
    ring as it is."""
    from SkullVAELib.implant.rimgrow import rim_rays, whole_bone_rim

    raymap, hole_cells, wedge = _cut_wall_map(wedge_cells=wedge_cells)
    (hole,) = find_holes(raymap)
    cfg = RimFitConfig(step_deg=1.0, ring=(2, 12), trim_mm=0.5)
    ring = rim_rays(raymap, hole_cells, cfg)
    kept = whole_bone_rim(raymap, hole, ring, cfg)
    np.testing.assert_array_equal(kept, ring & ~wedge)  # every wedge ray in the ring goes, nothing else
    off = RimFitConfig(step_deg=1.0, ring=(2, 12), trim_mm=0.0)
    np.testing.assert_array_equal(whole_bone_rim(raymap, hole, ring, off), ring)


def test_a_curved_vault_beyond_the_ring_drops_no_rim_ray():
    """The far rim's outer radius curves away (a dome: 70 mm at the hole, 8 mm lower 40° out) and the
    bone thickens outwards (5 → 7 mm): neither is a wedge, so every ring ray stays rim data."""
    from SkullVAELib.implant.rimgrow import rim_rays, whole_bone_rim

    alpha, beta = raycast.angle_grid(1.0)
    dirs = raycast.directions(alpha[:, None], beta[None, :])
    towards = np.array([0.8, 0.0, 0.6])
    angle = np.degrees(np.arccos(np.clip(dirs @ towards, -1.0, 1.0)))
    hole = angle < 12.0
    r_out = (70.0 - 8.0 * (angle / 40.0) ** 2).astype(np.float32)
    thickness = (5.0 + 2.0 * np.clip(angle / 40.0, 0.0, 1.0)).astype(np.float32)
    r_out[hole] = np.nan
    raymap = raycast.RayMap(np.zeros(3), 1.0, ~hole, r_out, r_out - thickness)
    (found,) = find_holes(raymap)
    cfg = RimFitConfig(step_deg=1.0, ring=(3, 12), trim_mm=0.5)
    ring = rim_rays(raymap, found.cells, cfg)
    np.testing.assert_array_equal(whole_bone_rim(raymap, found, ring, cfg), ring)
