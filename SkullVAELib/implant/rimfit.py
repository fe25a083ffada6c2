"""Geometric rim fit: a cranial implant continued across the hole from the defect's rim.

No training, so nothing to over-fit: the implant is built from the patient's own bone at the
original resolution.

1. :func:`raycast.cast` gives, per direction from a centre inside the cranium, the outer
   radius and thickness of the outermost bone layer.
2. Holes (:mod:`rimholes`, shared with the quality score): connected groups of rays that miss bone,
   enclosed by bone (not open to the face or the skull base), larger than ``min_hole_sr`` steradians,
   searched in a frame pitched off the grid's poles where the largest one comes near one (:mod:`gridturn`);
   everything below runs in that frame. The scan's edge (:mod:`scanedge`) is not an opening: a ray that
   leaves the scanned grid before the skull's expected radius is *unknown*, not open, so a hole bounded by
   bone and by the scan's edge (a gantry-tilted scan whose top edge cuts the defect) is still a hole; its
   rays that leave the scan far before the skull are not filled (all they would fill lies outside the
   scan), and rays whose bone is cut by the scan's edge are no rim data (their outer radius is the edge's).
   A hole then grows by the rays next to it that still belong to the defect (:mod:`rimgrow`):
   rays that passed it and met deeper bone, and (``grow_thick_mm``) rays that met its cut wall
   obliquely and hold only a wedge of the bone. A hole far smaller than the defect and far from it
   (:func:`rimholes.without_small_far_holes`: bone too thin for a scan of thick slices, a foramen) is not filled,
   nor is one far from it whose rim lies in no shell (:func:`rimholes.without_gaps_off_the_shell`: the orbits'
   thin roofs lost to a high threshold).
3. Fill: the outer radius and the thickness on a ring of rim rays (``ring`` cells outside the
   hole, less the rays its cut wall thinned: :func:`rimgrow.whole_bone_rim`) are continued across the hole with a thin-plate spline
   (``scipy.interpolate.RBFInterpolator``) in a gnomonic projection about the hole's mean
   direction (:mod:`rimspline`), smoothed more on voxels over 1 mm (``RimFitConfig.for_voxels``); with a mirror cue (``symmetry``), the mirrored skull's outer
   radius inside the hole plus a spline of the rim residual replace the plain spline where the
   mirror has bone, and its thickness enters by the share the rim confirms
   (:func:`rimspline.mirror_thickness_weight`); where the mirror has none (a defect across the
   mid-plane), the nearest complete skulls of a shape bank take its place (:mod:`rimcue`,
   :mod:`shapebank`) when one is given. The hole is filled once per ring width
   (``fill_rings``), and each ray keeps the median of those fills (:mod:`rimmedian`).
4. Rasterise at the original resolution: every voxel whose direction falls in the hole (or a
   ``band`` of cells around it) and whose radius lies between the filled inner and outer
   radius, minus the patient's bone.
5. Post-process each hole's fill as the anchors do (:mod:`postprocess`): closing, thin-shell removal, keep
   components that touch the patient's bone, drop small islands and pieces far from the fill's main piece.
   A skull with two defects keeps both implants: each is the main piece of its own hole's fill, and a
   far one stays when it holds at least ``second_defect_fraction`` of the largest one's voxels.

The patient's bone is never altered: the implant is disjoint from it by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from SkullVAELib.implant import raycast
from SkullVAELib.implant.gridturn import GridTurn
from SkullVAELib.implant.postprocess import postprocess_implant, second_defects
from SkullVAELib.implant.rasterise import rasterise
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimcue import choose_cue, cue_rays, usable_shapes
from SkullVAELib.implant.rimgrow import grow_hole, rim_rays, whole_bone_rim
from SkullVAELib.implant.rimholes import holes_in_frame, mean_direction
from SkullVAELib.implant.rimmedian import median_fill, ring_widths
from SkullVAELib.implant.rimspline import fit_rim_splines, gnomonic, mirror_thickness_weight, spline_points
from SkullVAELib.implant.scanedge import ScanEdge, cell_solid_angle, why_no_hole
from SkullVAELib.implant.shapebank import ShapeBank
from SkullVAELib.implant.shapemodel import ShapeModel
from SkullVAELib.io.image import SkullImage

_SQUARE = np.ones((3, 3), dtype=bool)


@dataclass
class RimFitResult:
    """implant: bool (I, J, K) on the input grid; holes (those it filled: not one outside the scan or that is only
    the scan's cut), ray map and scan edge, in the ray grid's frame
    (``turn``: LPS turned about the ray centre where the largest hole came near a grid pole, :mod:`gridturn`;
    :meth:`holes_in_lps` gives their directions in LPS); timings (s) per step ("raycast": the skull's rays,
    "holes": the scan's edge and the hole search, each summed over both frames where it was turned,
    "mirror_raycast", "fill", "postprocess"); messages: why an implant is empty or what is special about it
    (the scan's edge), one line each, for the user."""

    implant: np.ndarray
    holes: list[Hole]
    raymap: raycast.RayMap
    timings: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    edge: ScanEdge | None = None
    turn: GridTurn | None = None  # the grid's frame, where it was turned off a pole (gridturn); None: LPS

    def in_frame(self, skull: SkullImage, transform: np.ndarray | None = None) -> tuple[SkullImage, np.ndarray | None]:
        """(``skull``, an LPS ``transform`` such as the mirror's) as the rays saw them: turned with the grid's
        frame where it was (the same voxels), else as they are. Rays cast on them match ``raymap``'s."""
        if self.turn is None:
            return skull, transform
        return self.turn.skull(skull), self.turn.transform(transform)

    def holes_in_lps(self) -> list[Hole]:
        """The holes with their directions in LPS (copies where the grid's frame was turned; cells stay the grid's)."""
        if self.turn is None:
            return list(self.holes)
        return [replace(hole, direction=self.turn.to_lps(hole.direction)) for hole in self.holes]

    @property
    def cue(self) -> str:
        """The fill's cues ("mirror", "shapes" (a bank), "model" (a shape model), joined by ", ") or ""."""
        return ", ".join(c for c in ("mirror", "shapes", "model") if any(h.source == f"{c}+spline" for h in self.holes))


THICK_SLICE_MM = 3.0  # voxels larger than this: the user is told the fill is less exact


def thick_slice_note(skull: SkullImage) -> list[str]:
    """[one line for the user] when ``skull``'s largest voxel side exceeds ``THICK_SLICE_MM``, else [].

    On 5 mm slices the rim fit's implants scored DSC 0.87 on validation and 0.84 on test, against 0.93 for
    the same skulls on SkullFix's voxels (docs/results/issue-24-2026-12-05.md, "The rim fit on coarser scans")."""
    largest = float(np.max(skull.spacing))
    if largest <= THICK_SLICE_MM:
        return []
    return [
        f"the scan's voxels are up to {largest:.1f} mm: on slices thicker than {THICK_SLICE_MM:g} mm the rim fit "
        "reads the bone less exactly and the implant is less exact; a thinner reconstruction gives a better one"
    ]


def fill_hole(
    raymap: raycast.RayMap,
    hole: Hole,
    cfg: RimFitConfig,
    mirror: raycast.RayMap | None = None,
    shapes: ShapeBank | ShapeModel | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region, r_in, r_out): bool (Nα, Nβ) cells to rasterise and their filled radii (NaN outside).

    The cue the rim's splines correct: the mirrored skull (``mirror``) where it has bone over the
    hole and its rim, else the nearest skulls of ``shapes`` (:func:`shapebank.shape_cue`), else none.
    Rays the chosen cue has no bone on (a few are allowed) take the plain rim spline's radii."""
    dirs = raycast.grid_directions(raymap.step_deg)
    region = ndimage.binary_dilation(hole.cells, _SQUARE, iterations=cfg.band)
    region &= dirs @ hole.direction >= np.cos(np.deg2rad(cfg.max_angle_deg))  # the projection's limit
    ring = whole_bone_rim(raymap, hole, rim_rays(raymap, hole.cells, cfg, hole.unusable), cfg)
    r_out = np.full(raymap.hit.shape, np.nan, dtype=np.float32)
    r_in = np.full(raymap.hit.shape, np.nan, dtype=np.float32)
    if ring.sum() < 10:
        return np.zeros_like(region), r_in, r_out
    rim_idx = spline_points(ring, cfg.max_rim_points)
    flat_dirs = dirs.reshape(-1, 3)
    xy_rim = gnomonic(flat_dirs[rim_idx], hole.direction)
    fill_idx = np.flatnonzero(region)
    xy_fill = gnomonic(flat_dirs[fill_idx], hole.direction)
    outer = raymap.r_out.ravel()[rim_idx].astype(np.float64)
    thick = raymap.thickness.ravel()[rim_idx].astype(np.float64)
    base_out = base_thick = 0.0
    xy_rim_all, outer_all, thick_all = xy_rim, outer, thick
    k = cfg.shape_neighbours if shapes is not None else 0
    cue, source = choose_cue(raymap, hole.cells, hole.direction, ring, rim_idx, fill_idx, mirror, shapes, k)
    if cue is not None:
        m_out, m_thick = cue.r_out.ravel(), cue.thickness.ravel()
        use_cue = np.isfinite(m_out[fill_idx])
        ok_rim = np.isfinite(m_out[rim_idx])
        rim_idx, xy_rim, outer, thick = rim_idx[ok_rim], xy_rim[ok_rim], outer[ok_rim], thick[ok_rim]
        weight = mirror_thickness_weight(thick, m_thick[rim_idx], cfg.mirror_thickness)
        base_out, base_thick = m_out[rim_idx], weight * m_thick[rim_idx]
    smoothing, degree = (cfg.smoothing, cfg.thickness_smoothing), (cfg.degree, cfg.thickness_degree)
    fit_out, fit_thick = fit_rim_splines(xy_rim, outer - base_out, thick - base_thick, xy_fill, smoothing, degree)
    if cue is not None:
        fit_out = fit_out + np.where(use_cue, m_out[fill_idx], np.nan)
        fit_thick = fit_thick + np.where(use_cue, weight * m_thick[fill_idx], np.nan)
        hole.source = source
        towards = source == "mirror+spline" and (cfg.mirror_share < 1.0 or cfg.mirror_thickness_cap_mm > 0)
        if towards or not use_cue.all():
            plain = fit_rim_splines(xy_rim_all, outer_all, thick_all, xy_fill, smoothing, degree)
            if towards:
                fit_out, fit_thick = _towards_plain(fit_out, fit_thick, plain, cfg)
            # the cue's own gaps (its bone is missing there too: the mirror of a hole that crosses
            # the midline) take the plain rim spline, not nothing (up to 1 - MIN_HOLE_COVER of the hole)
            fit_out = np.where(use_cue, fit_out, plain[0])
            fit_thick = np.where(use_cue, fit_thick, plain[1])
    fit_thick = np.clip(fit_thick, 1.0, None)
    r_out.ravel()[fill_idx] = fit_out
    r_in.ravel()[fill_idx] = fit_out - fit_thick
    hole.rim_thickness_mm = float(np.median(raymap.thickness.ravel()[np.flatnonzero(ring)]))
    omega = np.broadcast_to(cell_solid_angle(raymap.step_deg), region.shape).ravel()
    in_hole = hole.cells.ravel()[fill_idx]
    outer_hole = np.nan_to_num(fit_out[in_hole])
    hole.area_mm2 = float((omega[fill_idx][in_hole] * outer_hole**2).sum())
    hole.expected_volume_mm3 = hole.area_mm2 * hole.rim_thickness_mm
    return region & np.isfinite(r_out), r_in, r_out


def _towards_plain(
    fit_out: np.ndarray, fit_thick: np.ndarray, plain: tuple[np.ndarray, np.ndarray], cfg: RimFitConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The mirror fill's (outer radius, thickness) (M,) mm held to the plain rim spline's ``plain``: its
    thickness within ``cfg.mirror_thickness_cap_mm`` of the spline's (where the mirrored side's bone
    differs from the rim's by more, e.g. a thicker or thinner region of the other side, the rim is
    trusted), then both shrunk towards the spline by ``cfg.mirror_share``."""
    cap = cfg.mirror_thickness_cap_mm
    if cap > 0:
        fit_thick = plain[1] + np.clip(fit_thick - plain[1], -cap, cap)
    w = cfg.mirror_share
    if w < 1.0:
        fit_out, fit_thick = w * fit_out + (1.0 - w) * plain[0], w * fit_thick + (1.0 - w) * plain[1]
    return fit_out, fit_thick


def postprocess(implant: np.ndarray, skull: SkullImage, cfg: RimFitConfig) -> np.ndarray:
    """The shared post-processing (:mod:`postprocess`) with the rim fit's settings."""
    return postprocess_implant(implant, skull, cfg.postprocess())


def rim_fit(
    skull: SkullImage,
    cfg: RimFitConfig | None = None,
    mirror_transform: np.ndarray | None = None,
    centre: np.ndarray | None = None,
    shapes: ShapeBank | ShapeModel | None = None,
) -> RimFitResult:
    """Implant(s) for every enclosed vault hole of ``skull`` (bool (I, J, K), disjoint from its bone).

    Args:
        mirror_transform: (4, 4) LPS reflection about the skull's mid-sagittal plane
            (``symmetry.mirror_transform``); enables the mirror cue.
        centre: ray centre (LPS mm); default :func:`raycast.cranial_centre`.
        shapes: complete skulls' ray maps (:mod:`shapebank`) or a shape model (:mod:`shapemodel`): the
            cue of holes the mirror does not cover.
    """
    cfg = (cfg or RimFitConfig()).for_voxels(skull.spacing)
    timings: dict[str, float] = {}
    centre = raycast.cranial_centre(skull) if centre is None else np.asarray(centre, dtype=np.float64)
    found = holes_in_frame(skull, centre, cfg, timings=timings)
    # a turned frame: the same voxels under a turned header, so the implant lies on the input's grid as it is
    skull, raymap, edge, holes, turn = found.skull, found.raymap, found.edge, found.holes, found.turn
    if turn is not None:
        mirror_transform = turn.transform(mirror_transform)
    t0 = time.perf_counter()
    mirror = None
    if mirror_transform is not None and holes:  # only the rays the holes' fill and rims read
        near = cue_rays([h.cells for h in holes], cfg.grow_reach + max(*ring_widths(cfg), cfg.band))
        mirror = raycast.cast(skull, centre, cfg.step_deg, transform=mirror_transform, exact=raymap.exact, rays=near)
    timings["mirror_raycast"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    shapes, notes = usable_shapes(shapes, cfg.step_deg, turn)  # read in the rays' frame
    no_hole = [] if holes else [why_no_hole(raymap, edge, cfg.min_hole_sr, found.opening_cells())]
    messages = (notes if holes else no_hole) + found.notes + thick_slice_note(skull)
    implant, filled = None, []  # the first hole's rasterised implant (or the union of several), the holes filled
    post_seconds = 0.0
    for hole in holes:
        _clip_to_scan(hole, edge, raymap.step_deg)
        if not hole.cells.any():
            messages.append(_edge_message(hole, "lies outside the scan: nothing of it can be filled"))
            continue
        if cfg.grow_mm > 0:
            grow_hole(raymap, hole, cfg)
        region, r_in, r_out = median_fill(raymap, hole, cfg, mirror, shapes, fill_hole)
        if _only_the_scan_edge(hole, edge, r_out, cfg):
            messages.append(_edge_message(hole, "is only the scan's edge cutting the skull (no ray sees a gap in it)"))
            continue
        if _fill_dives(raymap, hole, edge, r_out, cfg):
            messages.append(_edge_message(hole, f"is not filled: {DIVES}"))
            continue
        if _edge_all_round(hole, edge):
            messages.append(_edge_message(hole, f"is not filled: {EDGE_ALL_ROUND}"))
            continue
        if hole.outside_fraction > 0.0:
            messages.append(_edge_message(hole, "reaches the scan's edge; the implant is filled up to the edge"))
        piece = rasterise(skull, centre, cfg.step_deg, region, r_in, r_out)
        t1 = time.perf_counter()
        # each hole's fill post-processed on its own: pieces far from the main piece of *its* fill are dropped
        # (fragments along a scan's edge); a second defect's implant is the main piece of its own fill
        piece = postprocess(piece, skull, cfg)
        post_seconds += time.perf_counter() - t1
        implant = piece if implant is None else np.logical_or(implant, piece, out=implant)
        filled.append(hole)
    t1 = time.perf_counter()
    timings["fill"] = t1 - t0 - post_seconds
    if len(filled) > 1:  # a far hole's implant stays where it is a second defect's, not a gap of thin bone
        implant, note = second_defects(implant, skull, cfg.postprocess().max_gap_mm, cfg.second_defect_fraction)
        messages += [note] if note else []
    timings["postprocess"] = post_seconds + time.perf_counter() - t1
    # no hole filled: an empty implant in the mask's memory order (see rasterise)
    implant = np.zeros_like(skull.mask) if implant is None else implant
    if filled and not implant.any():
        messages.append(f"the rim fit filled {len(filled)} hole(s) but no implant survived inside the scan")
    # the holes it filled: one outside the scan or only the scan's cut is no defect to check an implant against
    return RimFitResult(implant, filled, raymap, timings, messages, edge, turn)


def _clip_to_scan(hole: Hole, edge: ScanEdge, step_deg: float) -> None:
    """Drop the hole's rays that leave the scan far before the skull; their bone is no rim data."""
    hole.unusable = edge.truncated
    outside = hole.cells & edge.beyond
    if outside.any():
        omega = np.broadcast_to(cell_solid_angle(step_deg), outside.shape)
        hole.outside_fraction = float(omega[outside].sum()) / hole.solid_angle_sr
        hole.cells = hole.cells & ~edge.beyond
        if hole.cells.any():
            hole.direction = mean_direction(hole.cells, step_deg)


def _only_the_scan_edge(hole: Hole, edge: ScanEdge, r_out: np.ndarray, cfg: RimFitConfig) -> bool:
    """True for a hole at the scan's edge in which no ray passes the filled outer surface inside the
    scan: the skull is cut by the scan's edge there, nothing is seen missing. (A defect whose rest lies
    outside the scan leaves at least a sliver of such rays; on SkullFix skulls tilted 21-30° and cut
    through the defect, 0.001-0.4 sr. A complete skull cut by the scan: 0 in 15 of 17, up to 0.03 sr.)"""
    if not (hole.cells & edge.unknown).any():
        return False
    with np.errstate(invalid="ignore"):
        seen = hole.cells & (edge.exit_mm >= r_out)
    hole.seen_sr = float(np.broadcast_to(cell_solid_angle(cfg.step_deg), seen.shape)[seen].sum())
    return not seen.any()


RIM_STRAY_MM = 20.0  # a fill this far below the rim's lowest outer radius is no continuation of the skull
DIVES = "too little of its rim lies inside the scan to continue the skull across it (is it the scan's cut?)"


def _fill_dives(raymap: raycast.RayMap, hole: Hole, edge: ScanEdge, r_out: np.ndarray, cfg: RimFitConfig) -> bool:
    """True for a hole at the scan's edge whose filled outer radius (``r_out`` float (Nα, Nβ) mm, NaN where not
    filled) dips more than ``RIM_STRAY_MM`` below the lowest outer radius of its rim rays.

    Where the scan's edge cuts a skull's side, the rays around the cut are truncated and its rim is what the rays
    through the cut meet inside the scan, deeper bone on one side of it: continued across the cut, it plunged to
    the ray centre and beyond (down to -250 mm), and the rays through the cut passed this fill inside the scan, so
    the cut passed for a defect (a field of view cutting a phantom's side 11 mm deep: a plate of 988 voxels 67 mm
    from the defect, kept as a second defect's). A vault continued from its rim stays near the rim's radii."""
    if not (hole.cells & edge.unknown).any():
        return False
    ring = rim_rays(raymap, hole.cells, cfg, hole.unusable)
    filled = np.isfinite(r_out) & hole.cells
    if not ring.any() or not filled.any():
        return False
    return float(r_out[filled].min()) < float(np.nanmin(raymap.r_out[ring])) - RIM_STRAY_MM


EDGE_BORDER_SHARE = 0.95  # a hole whose bordering rays lie this much at the scan's edge is bounded by the scan
EDGE_ALL_ROUND = "the scan's edge bounds it, not the skull's bone (is it the scan's cut?)"


def _edge_all_round(hole: Hole, edge: ScanEdge) -> bool:
    """True for a hole whose bordering rays (the cells next to ``hole.cells``) are truncated or unknown for at least
    ``EDGE_BORDER_SHARE``: the scan's edge bounds it, not bone of the skull.

    A scan that stops below the vertex leaves a ring of bone at its top face: the rays through the ring meet no
    bone inside the scan past the skull's expected radius, so they read as a hole, and its rim, taken beyond the
    ring's truncated rays, was continued across it into a plate in the top slices (a phantom cut 9 mm below its
    vertex: a 571-voxel plate 55 mm from the true implant, HD95 70 mm at quality 0.90, no warning). That hole's
    border lies at the scan's edge all round (share 1.0); the holes filled on SkullFix's 140 skulls reach 0.03 at
    most, and a phantom's defect three quarters outside a tilted scan's top 0.86: it borders the skull's bone too."""
    border = ndimage.binary_dilation(hole.cells, np.ones((3, 3), dtype=bool)) & ~hole.cells
    if not border.any():
        return False
    return float(np.count_nonzero(border & (edge.truncated | edge.unknown))) >= EDGE_BORDER_SHARE * np.count_nonzero(
        border
    )


def _edge_message(hole: Hole, what: str) -> str:
    share = f", {100 * hole.outside_fraction:.0f} % of it outside the scan," if hole.outside_fraction else ""
    return f"the hole of {hole.solid_angle_sr:.2f} sr{share} {what}"
