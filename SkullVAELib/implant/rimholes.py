"""The skull's holes as the rim fit sees them: enclosed groups of missing rays, in a frame off the grid's poles.

Shared by the rim fit (:mod:`rimfit`, which fills them) and the implant-quality score (:mod:`quality`, which
measures how much of them an implant covers and whether a far piece lies over a second one), so that both
read the same holes in the same frame.

1. :func:`raycast.cast` gives every ray's outermost bone layer; :func:`scanedge.scan_edge` marks the rays
   the scan's edge cuts or leaves unknown.
2. :func:`find_holes`: connected groups of rays that miss bone, enclosed by bone (not open to the grid's
   anterior pole, the face, or its downward seam, the skull base: :func:`scanedge.openings`), larger than
   ``min_hole_sr`` steradians. The scan's edge is not an opening.
3. :func:`without_small_far_holes` (the rim fit only): a small gap far from the largest hole is thin bone
   or a foramen, not a defect; :func:`without_gaps_off_the_shell`: nor is a gap far from it whose rim lies
   at depths no shell has (the orbits' thin roofs lost to a high threshold).
4. :func:`holes_in_frame`: where the largest hole comes within ``pole_clearance_deg`` of a grid pole, all of
   the above runs again in a frame pitched off it (:mod:`gridturn`): near a pole the grid's cells are no
   neighbourhoods on the sphere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree

from SkullVAELib.implant import raycast
from SkullVAELib.implant.gridturn import GridTurn, turn_off_poles
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimgrow import rim_ring
from SkullVAELib.implant.rimspline import gnomonic
from SkullVAELib.implant.scanedge import ScanEdge, cell_solid_angle, miss_groups, openings, scan_edge
from SkullVAELib.io.image import SkullImage


def mean_direction(cells: np.ndarray, step_deg: float) -> np.ndarray:
    """(3,) unit solid-angle-weighted mean direction of grid cells (bool (Nα, Nβ))."""
    dirs = raycast.grid_directions(step_deg)
    omega = np.broadcast_to(cell_solid_angle(step_deg), cells.shape)
    mean = (dirs[cells] * omega[cells][:, None]).sum(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def find_holes(
    raymap: raycast.RayMap,
    min_hole_sr: float = 0.02,
    unknown: np.ndarray | None = None,
    opening_cells: dict[str, np.ndarray] | None = None,
) -> list[Hole]:
    """Enclosed groups of missing rays (8-connected on the grid, joined across its seam), largest first.

    Args:
        unknown: bool (Nα, Nβ) miss rays that left the scan before the skull (:func:`scan_edge`);
            a group that reaches the anterior pole or the seam only through such rays is still enclosed.
        opening_cells: the cells through which a group is open (default :func:`scanedge.openings`; a turned
            frame's are those turned with it, :meth:`gridturn.GridTurn.openings`).

    Row 0 of the grid is the posterior pole (horizontal, backwards: the occipital vault, no opening of
    a normal skull), row -1 the anterior pole (the face's openings), columns 0 and -1 the downward
    sagittal seam (the skull base) where it points more than 30° below the horizontal
    (:func:`~SkullVAELib.implant.scanedge.openings`).
    A group that touches the posterior pole is a hole like any other (a vault defect of a scan tilted
    backwards reaches it: SkullFix training case 009).
    """
    labels, n = miss_groups(~raymap.hit)
    if n == 0:
        return []
    reach = labels if unknown is None else np.where(unknown, 0, labels)
    outside = np.logical_or.reduce(list((opening_cells or openings(raymap.step_deg)).values()))
    border = np.unique(reach[outside])
    omega = cell_solid_angle(raymap.step_deg)
    holes = []
    for lab in range(1, n + 1):
        if lab in border:
            continue
        cells = labels == lab
        sr = float((omega * cells).sum())
        if sr < min_hole_sr:
            continue
        holes.append(Hole(cells, sr, mean_direction(cells, raymap.step_deg)))
    return sorted(holes, key=lambda h: -h.solid_angle_sr)


def without_small_far_holes(holes: list[Hole], cfg: RimFitConfig) -> tuple[list[Hole], list[str]]:
    """(``holes`` (largest first) less the small ones far from the largest, one message per hole left out).

    A hole under ``cfg.far_hole_share`` of the largest hole's solid angle whose nearest ray lies more
    than ``cfg.far_hole_deg`` from the largest hole's rays is a gap where the bone is too thin for the
    scan (the temporal squama on 3 mm slices), not a second defect: its fill would be a piece far from
    the defect (docs/results/issue-24-2026-12-05.md, "The rim fit on coarser scans"). Off when either setting is 0."""
    if len(holes) < 2 or cfg.far_hole_share <= 0 or cfg.far_hole_deg <= 0:
        return holes, []
    main = holes[0]
    kept, notes = [main], []
    for hole, nearest in zip(holes[1:], degrees_from_first(holes, cfg.step_deg), strict=True):
        if hole.solid_angle_sr < cfg.far_hole_share * main.solid_angle_sr and nearest > cfg.far_hole_deg:
            notes.append(
                f"a gap of {hole.solid_angle_sr:.3f} sr {nearest:.0f}° from the defect is not filled "
                "(thin bone or a foramen, not a second defect)"
            )
            continue
        kept.append(hole)
    return kept, notes


#: rim rays farther than this from a hole's direction are not read by :func:`rim_spread_mm` (degrees)
MAX_RIM_DEG = 80.0


def rim_spread_mm(raymap: raycast.RayMap, hole: Hole, cfg: RimFitConfig, unusable: np.ndarray | None = None) -> float:
    """How far from one shell ``hole``'s rim lies: the interquartile range (mm) of its rim rays' outer radii about
    their linear trend across the hole (least squares in the tangent plane about its direction, :func:`rimspline.
    gnomonic`), NaN with fewer than 3 rim rays (a hole such a rule then keeps).

    ``hole.cells`` lie on ``raymap``'s grid; ``unusable`` (bool (Nα, Nβ)): hit rays that are no rim data (bone cut
    by the scan's edge, :attr:`scanedge.ScanEdge.truncated`); rim rays over ``MAX_RIM_DEG`` from the hole's direction
    are left out too (the tangent plane holds no farther ones).

    A hole in the vault's shell has its rim on a smooth surface; the trend takes the skull's elongation (a low hole's
    rim runs from 60 to 100 mm out), so what is left is how rough the rim is: 1-8 mm about the holes of the extra
    skulls. A gap between bones at different depths leaves a step: 20-24 mm about the orbits' lost roofs.
    The rim is the rim fit's (:func:`rimgrow.rim_ring`, ``cfg.ring`` cells of ``cfg.step_deg``) on ``raymap``'s
    grid, whatever its step (the quality score's is coarser): about the same ring in degrees (whole cells)."""
    scale = cfg.step_deg / raymap.step_deg
    ring = rim_ring(raymap, hole.cells, replace(cfg, ring=tuple(max(1, int(round(c * scale))) for c in cfg.ring)))
    dirs = raycast.grid_directions(raymap.step_deg)
    ring &= dirs @ hole.direction > np.cos(np.deg2rad(MAX_RIM_DEG))
    if unusable is not None:
        ring &= ~unusable
    radii = raymap.r_out[ring].astype(np.float64)
    if radii.size < 3:
        return float("nan")
    plane = gnomonic(dirs[ring], hole.direction)
    trend = np.c_[np.ones(radii.size), plane]
    residual = radii - trend @ np.linalg.lstsq(trend, radii, rcond=None)[0]
    upper, lower = np.percentile(residual, [75.0, 25.0])
    return float(upper - lower)


def without_gaps_off_the_shell(
    holes: list[Hole], raymap: raycast.RayMap, cfg: RimFitConfig, unusable: np.ndarray | None = None
) -> tuple[list[Hole], list[str]]:
    """(``holes`` less those far from the first whose rim is no shell, one message per hole left out).

    ``holes`` as :func:`holes_in_frame` orders them: the first is the largest the scan sees into (the defect), and
    it is never left out here. A hole whose nearest ray lies more than ``cfg.far_hole_deg`` from the first hole's
    rays and whose rim rays' outer radii spread about their trend over more than ``cfg.gap_rim_spread_mm``
    (:func:`rim_spread_mm`, without the ``unusable`` rays: bone cut by the scan's edge) is a gap
    between bones at different depths, not a hole in the vault: at a threshold above their bone, the orbits' thin
    roofs go, and the rays through them pass the orbits between the frontal bone (≈ 90 mm out) and the deep bone
    below (≈ 35 mm). Its fill would be a plate 60-90 mm from the defect (docs/results/issue-24-2026-12-07.md,
    "A gap in the orbits' roofs is no second defect"). A small defect cut into the orbit's level reads alike (up to
    16 mm on SkullFix's skulls); one on the vault above it does not (at most 8 mm). Off when either setting is 0."""
    if len(holes) < 2 or cfg.gap_rim_spread_mm <= 0 or cfg.far_hole_deg <= 0:
        return holes, []
    kept, notes = [holes[0]], []
    for hole, nearest in zip(holes[1:], degrees_from_first(holes, raymap.step_deg), strict=True):
        spread = rim_spread_mm(raymap, hole, cfg, unusable) if nearest > cfg.far_hole_deg else float("nan")
        if spread > cfg.gap_rim_spread_mm:  # NaN (near the defect, or too few rim rays): kept
            notes.append(
                f"a gap of {hole.solid_angle_sr:.3f} sr {nearest:.0f}° from the defect is not filled: its rim strays "
                f"{spread:.0f} mm in depth, in no shell (thin bone such as the orbits' roofs, not a defect)"
            )
            continue
        kept.append(hole)
    return kept, notes


def degrees_from_first(holes: list[Hole], step_deg: float) -> list[float]:
    """For each hole after the first (cells on the grid of ``step_deg``), the smallest angle (degrees) between its rays
    and the first hole's: how far the far-gap rules find it from the defect."""
    dirs = raycast.grid_directions(step_deg)
    first = cKDTree(dirs[holes[0].cells])  # unit vectors: the nearest by chord is the nearest by angle
    chords = [float(first.query(dirs[hole.cells])[0].min()) for hole in holes[1:]]
    return [float(np.degrees(2.0 * np.arcsin(min(chord / 2.0, 1.0)))) for chord in chords]


@dataclass
class HoleSearch:
    """What :func:`holes_in_frame` found, all in the ray grid's frame.

    Attributes:
        skull: the skull as the rays saw it (turned by its header where ``turn`` is set: the same voxels).
        raymap: every ray of the grid, cast on ``skull``.
        edge: the rays the scan's edge cuts or leaves unknown.
        holes: the enclosed holes, largest first.
        notes: one line per far gap left out (thin bone: the rim fit's rules; empty when they were not applied).
        turn: the grid's frame where the largest hole came near a pole, else None (LPS).
    """

    skull: SkullImage
    raymap: raycast.RayMap
    edge: ScanEdge
    holes: list[Hole]
    notes: list[str]
    turn: GridTurn | None = None

    def opening_cells(self) -> dict[str, np.ndarray] | None:
        """The cells through which a group of missing rays is open in this frame (None: the grid's own)."""
        return None if self.turn is None else self.turn.openings(self.raymap.step_deg)


def holes_in_frame(
    skull: SkullImage,
    centre: np.ndarray,
    cfg: RimFitConfig,
    step_deg: float | None = None,
    leave_out_far_gaps: bool = True,
    timings: dict[str, float] | None = None,
) -> HoleSearch:
    """The enclosed holes of ``skull`` seen from ``centre`` (LPS mm) on a grid of ``step_deg`` (default the rim
    fit's), cast again in a frame pitched off the grid's poles where the largest one comes within
    ``cfg.pole_clearance_deg`` of one (:func:`gridturn.turn_off_poles`).

    Args:
        cfg: the rim fit's settings (``min_hole_sr``, the scan edge's margins, the far-gap rule, the clearance).
        leave_out_far_gaps: apply :func:`without_small_far_holes` and :func:`without_gaps_off_the_shell` (the rim fit
            does not fill them, and the quality score does not ask an implant to cover them unless its
            ``count_far_gaps`` is set).
        timings: seconds added to "raycast" and "holes" (summed over both frames where the grid was turned).
    """
    step = cfg.step_deg if step_deg is None else float(step_deg)
    found = _search(skull, centre, cfg, step, None, leave_out_far_gaps, timings)
    turn = turn_off_poles(found.holes, centre, step, cfg.pole_clearance_deg)
    if turn is None:
        return found
    return _search(turn.skull(skull), centre, cfg, step, turn, leave_out_far_gaps, timings)


def _search(
    skull: SkullImage,
    centre: np.ndarray,
    cfg: RimFitConfig,
    step_deg: float,
    turn: GridTurn | None,
    leave_out_far_gaps: bool,
    timings: dict[str, float] | None,
) -> HoleSearch:
    """One frame's rays, scan edge and holes (``skull`` already turned by ``turn`` where it is set)."""
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    raymap = raycast.cast(skull, centre, step_deg)  # every ray; reads skull.mask in place
    if turn is not None:
        raymap = replace(raymap, up=turn.lps_up())
    timings["raycast"] = timings.get("raycast", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    edge = scan_edge(skull, raymap, cfg.edge_margin_mm, cfg.beyond_mm)
    opening_cells = None if turn is None else turn.openings(step_deg)
    holes = _seen_first(find_holes(raymap, cfg.min_hole_sr, edge.unknown, opening_cells), edge)
    notes: list[str] = []
    if leave_out_far_gaps:
        holes, notes = without_small_far_holes(holes, replace(cfg, step_deg=step_deg))
        holes, off_shell = without_gaps_off_the_shell(holes, raymap, cfg, edge.truncated)  # the rim fit's ring
        notes += off_shell
    timings["holes"] = timings.get("holes", 0.0) + time.perf_counter() - t0
    return HoleSearch(skull, raymap, edge, holes, notes, turn)


def _seen_first(holes: list[Hole], edge: ScanEdge) -> list[Hole]:
    """``holes`` (largest first) with those of which some ray sees the gap inside the scan ahead of those whose
    every ray is unknown (the scan's edge cutting the skull, e.g. a field of view that stops below the vertex):
    the defect, not the scan's cut, is the main hole that far gaps are measured from, that the frame turns for
    and that the self-check tries (docs/results/issue-24-2026-12-07.md, "Reviewed: the scan's cut as the main hole …")."""
    return sorted(holes, key=lambda hole: not bool((hole.cells & ~edge.unknown).any()))  # stable: size order kept
