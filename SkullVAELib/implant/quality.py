"""How well an implant continues the patient's skull across the rim: a score in [0, 1], 1 = seamless.

Works for any source's implant (rim fit, atlas, learned, model): it looks only at the defective
skull and the implant, never at how the implant was made. Rays from the cranial centre
(:mod:`raycast`, ``step_deg``) through the defective skull (bone) and through the completed
skull (bone ∪ implant) give, per direction, the outer radius and the thickness of the outermost
bone layer. The implant's *footprint* is the set of rays whose outermost layer the implant
changed (it fills a missing ray or lies on top of the bone).

Components, each in [0, 1]:

- ``surface``: the bone's outer radius on a ring just outside the footprint (``ring`` cells),
  continued by a thin-plate spline into a band just inside it (``band`` cells), against the
  completed skull's outer radius there: 1 / (1 + (median |difference| / ``surface_mm``)²), the
  scale at least ``voxel_scale`` voxels (a coarse scan measures steps of a voxel where there are none).
  A step at the rim (an implant too high or too deep, shifted, tilted) lowers it.
- ``thickness``: the same for the layer's thickness (``thickness_mm``): an implant thinner or
  thicker than the bone around it, or one that does not meet the bone, lowers it.
- ``coverage``: the share of the skull's enclosed holes (the rim fit's :func:`rimholes.find_holes`,
  scan edge aware; only the rays the scan sees through) whose rays meet bone once the implant is
  in; absent when the skull has no such hole (a facial defect). A gap far from the defect that the
  rim fit leaves open as thin bone (:func:`rimholes.without_small_far_holes`, small;
  :func:`rimholes.without_gaps_off_the_shell`, its rim in no shell) is no hole to cover here either
  (``count_far_gaps`` counts it).
- ``pieces``: 1 - ``stray_weight`` × the share of the implant's volume in stray pieces, at least 0: pieces
  farther than ``max_gap_mm`` from its main piece (:func:`postprocess.piece_gaps`), unless a piece lies over
  another enclosed hole than the main piece and is a second defect's size (a skull with two defects has two
  implants, and neither is stray; the rim fit's ``second_defect_fraction``).

Rays whose bone or implant is cut by the scan's edge (:mod:`scanedge`) are left out of the rim
comparison: their radii are the edge's, not the skull's.

score = the product of the components (an empty implant scores 0): one failure is enough to make
an implant bad. When no rim component can be measured (the rim lies beyond the scan's edge, or the
implant is a sliver), a neutral ``rim`` component of 0.5 stands in for them. The explanation names the measures and the weakest component.

A measure, not a component: ``reach_mm``, how far the footprint's middle lies from its rim (mm along
the implant's outer surface). A fill continued from the rim is least sure there: on SkullFix's training
defects the rim fit's shell lay 0.12 mm (SD over holes) off the truth within about 5 mm of the rim and
1.2 mm off beyond about 30 mm (docs/results/issue-24-2026-12-06.md, "The true implant's own cavities …"). The
explanation names it so that a reader knows how far the implant reaches beyond the bone that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.interpolate import RBFInterpolator

from SkullVAELib.implant import raycast
from SkullVAELib.implant.check import MIN_IMPLANT_MM3
from SkullVAELib.implant.postprocess import piece_gaps
from SkullVAELib.implant.rimconfig import RimFitConfig
from SkullVAELib.implant.rimholes import holes_in_frame
from SkullVAELib.implant.rimspline import gnomonic, spline_points
from SkullVAELib.io.image import SkullImage

_SQUARE = np.ones((3, 3), dtype=bool)
UNMEASURED = 0.5  # the rim component when nothing of the rim can be measured: neither good nor bad


@dataclass(frozen=True)
class QualityConfig:
    """Settings of :func:`implant_quality` (angles in degrees, lengths in mm)."""

    step_deg: float = 2.0
    band: tuple[int, int] = (1, 3)  # footprint cells this many cells inside its border are compared
    ring: tuple[int, int] = (2, 6)  # bone cells this many cells outside it carry the fit
    surface_mm: float = 2.0  # a median step of this many mm halves the surface component
    thickness_mm: float = 2.0  # ... and of the thickness
    voxel_scale: float = 1.0  # ... at least this many of the scan's largest voxel sides (a voxel of noise)
    on_top_mm: float = 1.0  # a ray's outer radius raised by more than this: the implant lies on top
    max_gap_mm: float = 20.0  # pieces farther than this from the main piece are stray ...
    over_hole_share: float = 0.5  # ... unless this share of their voxels lies on another enclosed hole's rays
    stray_weight: float = 10.0  # 10 % of the volume stray: pieces component 0
    max_fit_points: int = 400
    junction_mm: tuple[float, float] = (1.0, 6.0)  # no vault hole: plate thickness this far either side of the junction
    count_far_gaps: bool = False  # count the far gaps the rim fit leaves open (thin bone) as holes to cover


@dataclass
class ImplantQuality:
    """score in [0, 1] (1 = seamless); components (each in [0, 1]); measures (mm, fractions); explanation (one line)."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    explanation: str = ""


def _main_footprint(footprint: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cells, unit mean direction) of the footprint's largest 8-connected group of rays."""
    labels, n = ndimage.label(footprint, structure=_SQUARE)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    cells = labels == int(np.argmax(sizes))
    mean = dirs[cells].sum(axis=0)
    return cells, mean / max(float(np.linalg.norm(mean)), 1e-12)


def _reach_mm(cells: np.ndarray, completed: raycast.RayMap, step_deg: float) -> float:
    """How far (mm, along the outer surface) the main footprint's (``cells``) ray farthest from its border
    lies from it: cells × ``step_deg`` in radians × the footprint's median outer radius. A ray grid's
    cells narrow towards its poles, which lie away from the vault (front and back of the head)."""
    if not cells.any():
        return 0.0
    radius = float(np.nanmedian(completed.r_out[cells]))
    return float(ndimage.distance_transform_edt(cells).max()) * np.deg2rad(step_deg) * radius


def _continuity(bone, completed, usable, footprint, main, cfg) -> tuple[float, float, int]:
    """(median |outer-radius step|, median |thickness step|, band rays) across the footprint's rim (mm).

    ``usable``: rays whose radii are the skull's (not cut by the scan's edge), on both sides; ``main``:
    (cells, direction) of the footprint's largest group (:func:`_main_footprint`)."""
    dirs = raycast.grid_directions(cfg.step_deg)
    cells, direction = main
    inside = ndimage.distance_transform_cdt(cells, metric="chessboard")
    outside = ndimage.distance_transform_cdt(~cells, metric="chessboard")
    within = dirs @ direction >= np.cos(np.deg2rad(80.0))  # the projection's limit
    band = cells & (inside > cfg.band[0]) & (inside <= cfg.band[1]) & completed.hit & usable & within
    ring = ~footprint & (outside > cfg.ring[0]) & (outside <= cfg.ring[1]) & usable & within
    if band.sum() < 5 or ring.sum() < 10:
        return float("nan"), float("nan"), int(band.sum())
    ring_idx = spline_points(ring, cfg.max_fit_points)
    flat = dirs.reshape(-1, 3)
    xy_ring, xy_band = gnomonic(flat[ring_idx], direction), gnomonic(flat[band.ravel()], direction)
    kw = {"kernel": "thin_plate_spline", "smoothing": 0.01, "degree": 2}
    steps = []
    for bone_map, done_map in ((bone.r_out, completed.r_out), (bone.thickness, completed.thickness)):
        fit = RBFInterpolator(xy_ring, bone_map.ravel()[ring_idx].astype(np.float64), **kw)(xy_band)
        steps.append(float(np.median(np.abs(done_map[band] - fit))))
    return steps[0], steps[1], int(band.sum())


def _bone_free_box(skull: SkullImage, implant: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """(index box, bool crop): the smallest box of ``implant`` without the skull's bone, and that part
    of it; an empty crop (and the first voxel's box) when nothing is left."""
    from SkullVAELib.implant.cleanup import bounding_box

    implant = np.asarray(implant, dtype=bool)
    outer = bounding_box(implant) or (slice(0, 1),) * 3
    crop = implant[outer] & ~skull.mask[outer]
    inner = bounding_box(crop)
    if inner is None:
        return outer, crop
    box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True))
    return box, crop[inner]


def _hole_under(
    skull: SkullImage, index: np.ndarray, hole_ids: np.ndarray, centre: np.ndarray, cfg: QualityConfig
) -> int:
    """The hole (1 + its index in ``hole_ids``, an int (Nα, Nβ) map; 0: none) on whose rays from ``centre`` at least
    ``cfg.over_hole_share`` of the voxels ``index`` (int (N, 3) of ``skull``'s grid) lie."""
    row, col, _ = raycast.voxel_cells(skull, index, centre, cfg.step_deg)
    counts = np.bincount(hole_ids[row, col], minlength=2)
    best = int(np.argmax(counts[1:])) + 1
    return best if counts[best] >= cfg.over_hole_share * len(index) else 0


def _stray_fraction(
    skull: SkullImage,
    box: tuple[slice, ...],
    crop: np.ndarray,
    holes: list,
    centre: np.ndarray,
    cfg: QualityConfig,
    second_defect_fraction: float,
) -> tuple[float, float]:
    """(share of the implant's voxels in stray pieces, largest gap mm of a stray piece) of the implant ``crop``
    (bool, its bounding box ``box`` on ``skull``'s grid). A piece is stray when it lies farther than
    ``cfg.max_gap_mm`` from the main piece, unless it is a second defect's implant: it lies over another enclosed
    hole (``holes``) than the main piece (:func:`_hole_under`) and holds at least ``second_defect_fraction`` (the rim
    fit's) of the main piece's voxels (a gap of thin bone is smaller)."""
    labels, sizes, gaps = piece_gaps(crop, skull.spacing)
    far = gaps > cfg.max_gap_mm
    candidates = np.flatnonzero(far & (sizes >= second_defect_fraction * sizes.max()))
    if candidates.size and len(holes) > 1:
        hole_ids = np.zeros(holes[0].cells.shape, dtype=np.intp)
        for number, hole in enumerate(holes, start=1):
            hole_ids[hole.cells] = number
        offset = np.array([s.start for s in box])
        main = _hole_under(skull, np.argwhere(labels == int(np.argmax(sizes))) + offset, hole_ids, centre, cfg)
        for label in candidates:
            under = _hole_under(skull, np.argwhere(labels == label) + offset, hole_ids, centre, cfg)
            far[label] = under in (0, main)
    return float(sizes[far].sum()) / max(float(sizes.sum()), 1.0), float(gaps[far].max()) if far.any() else 0.0


def _coverage(holes: list, bone: raycast.RayMap, completed: raycast.RayMap, edge) -> tuple[bool, float]:
    """(the skull has an enclosed hole (``holes``: :func:`rimholes.find_holes` of ``bone``), the share (solid angle)
    of their rays that the scan sees through which meet bone with the implant in; NaN when there are none)."""
    if not holes:
        return False, float("nan")
    cells = np.logical_or.reduce([h.cells for h in holes]) & ~edge.unknown  # rays the scan sees through
    alpha, _ = raycast.angle_grid(bone.step_deg)
    omega = np.broadcast_to(np.sin(alpha)[:, None], cells.shape)
    total = float(omega[cells].sum())
    return True, float(omega[cells & completed.hit].sum()) / total if total > 0 else float("nan")


def _ray_components(skull, bone, completed, edge, raised, cfg, measures) -> dict[str, float]:
    """surface and thickness components of the rim continuity on the ray maps (0 when the implant
    raises no ray's outer surface: it lies inside the skull)."""
    if not raised.any():
        return {"surface": 0.0, "thickness": 0.0}
    cut = completed.hit & (edge.exit_mm - np.nan_to_num(completed.r_out) <= 1.0)  # bone or implant cut by the scan
    usable = (bone.hit & ~edge.truncated) | (completed.hit & ~cut & ~bone.hit) | (raised & ~cut)
    main = _main_footprint(raised, raycast.grid_directions(cfg.step_deg))
    surface, thick, n_band = _continuity(bone, completed, usable, raised, main, cfg)
    measures.update(surface_step_mm=surface, thickness_step_mm=thick, band_rays=float(n_band))
    measures["reach_mm"] = _reach_mm(main[0], completed, cfg.step_deg)
    if not np.isfinite(surface):
        return {}
    floor = cfg.voxel_scale * float(np.max(skull.spacing))
    return {
        "surface": 1.0 / (1.0 + (surface / max(cfg.surface_mm, floor)) ** 2),
        "thickness": 1.0 / (1.0 + (thick / max(cfg.thickness_mm, floor)) ** 2),
    }


def _plate_thickness_ratio(skull: SkullImage, implant: np.ndarray, cfg: QualityConfig) -> float:
    """Implant / bone plate thickness next to their junction: twice the 90th percentile of the depth
    inside bone ∪ implant, on the implant voxels and on the bone voxels ``junction_mm`` from the other."""
    from SkullVAELib.implant.cleanup import bounding_box
    from SkullVAELib.implant.distance import depth_mm

    lo, hi = cfg.junction_mm
    box = bounding_box(implant, margin=[int(np.ceil(2 * hi / v)) + 1 for v in skull.spacing])
    imp, bone = implant[box], skull.mask[box]
    depth = depth_mm(imp | bone, skull.spacing)
    from_bone = depth_mm(~bone, skull.spacing)
    from_imp = depth_mm(~imp, skull.spacing)
    imp_band = imp & (from_bone > lo) & (from_bone <= hi)
    bone_band = bone & (from_imp > lo) & (from_imp <= hi)
    imp_depth, bone_depth = depth[imp_band], depth[bone_band]
    if (
        len(imp_depth) < 10
        or len(bone_depth) < 10
        or not (np.isfinite(imp_depth).all() and np.isfinite(bone_depth).all())
    ):
        return float("nan")  # too few voxels at the junction, or bone and implant fill the box (no depth)
    return float(np.percentile(imp_depth, 90) / max(np.percentile(bone_depth, 90), 1e-6))


def _explain(score: float, components: dict, measures: dict) -> str:
    parts = []
    if "surface_step_mm" in measures and np.isfinite(measures["surface_step_mm"]):
        parts.append(f"outer surface step at the rim {measures['surface_step_mm']:.1f} mm")
        parts.append(f"thickness step {measures['thickness_step_mm']:.1f} mm")
    if np.isfinite(measures.get("plate_thickness_ratio", np.nan)):
        parts.append(f"plate {measures['plate_thickness_ratio']:.2f}x as thick as the bone at the junction")
    if np.isfinite(measures.get("coverage", np.nan)):
        parts.append(f"covers {100 * measures['coverage']:.0f} % of the hole")
    if measures.get("reach_mm", 0.0) > 0:
        parts.append(f"its middle lies {measures['reach_mm']:.0f} mm from the rim")
    if measures.get("stray_fraction", 0.0) > 0:
        parts.append(
            f"{100 * measures['stray_fraction']:.1f} % of it in pieces up to {measures['stray_gap_mm']:.0f} mm away"
        )
    if "rim" in components:
        parts.append("the rim could not be measured (cut by the scan's edge or too small)")
    weakest = min(components, key=components.get) if components else "none"
    return f"implant quality {score:.2f} (weakest: {weakest}): " + ", ".join(parts)


def implant_quality(
    skull: SkullImage,
    implant: np.ndarray,
    cfg: QualityConfig | None = None,
    centre: np.ndarray | None = None,
    rim: RimFitConfig | None = None,
) -> ImplantQuality:
    """The rim agreement of ``implant`` (bool (I, J, K) on ``skull``'s grid) with ``skull``'s bone.

    Args:
        skull: the defective skull (never modified).
        implant: any source's implant; voxels on the patient's bone are ignored.
        centre: ray centre (LPS mm); default :func:`raycast.cranial_centre`.
        rim: the rim fit's settings that say what a hole is (the smallest hole, the scan edge's margins, the
            far-gap rule, the pole clearance, a second defect's share); default the rim fit's defaults.
    """
    cfg = cfg or QualityConfig()
    box, crop = _bone_free_box(skull, implant)  # the implant's box only: no whole-scan copies
    volume = float(np.count_nonzero(crop)) * skull.voxel_volume_mm3
    if volume < MIN_IMPLANT_MM3:
        return ImplantQuality(0.0, {"volume": 0.0}, {"volume_mm3": volume}, f"empty implant ({volume:.0f} mm³)")
    centre = raycast.cranial_centre(skull) if centre is None else np.asarray(centre, dtype=np.float64)
    rim = rim or RimFitConfig()
    # the rim fit's holes in its frame: near a pole the grid's cells are no neighbourhoods on the sphere, and the
    # rim read there is off (SkullFix 057 pitched 20° chin-up scored 0.33 at DSC 0.97); a small gap far from the
    # defect is thin bone, not a hole to cover, for every source as for the rim fit (``count_far_gaps``)
    found = holes_in_frame(skull, centre, rim, step_deg=cfg.step_deg, leave_out_far_gaps=not cfg.count_far_gaps)
    skull, bone, edge, holes = found.skull, found.raymap, found.edge, found.holes
    reach = max(raycast.max_radius(skull, centre), raycast.box_radius(skull, box, centre))
    with_implant = skull.mask.copy(order="K")  # the mask's memory order (the ray casting reads it in place)
    with_implant[box] |= crop
    completed = raycast.cast(skull.with_mask(with_implant), centre, cfg.step_deg, radius_mm=reach)
    raised = completed.hit & (~bone.hit | (np.nan_to_num(completed.r_out) > np.nan_to_num(bone.r_out) + cfg.on_top_mm))
    components: dict[str, float] = {}
    measures: dict[str, float] = {"volume_mm3": volume}
    vault_hole, coverage = _coverage(holes, bone, completed, edge)
    measures["coverage"] = coverage
    if vault_hole:  # an enclosed vault hole: the cranium's ray model applies
        components.update(_ray_components(skull, bone, completed, edge, raised, cfg, measures))
        if np.isfinite(coverage):
            components["coverage"] = coverage
    else:  # no enclosed vault hole (a facial defect): the plate's thickness across the junction, voxel-wise
        ratio = _plate_thickness_ratio(skull, with_implant & ~skull.mask, cfg)
        measures["plate_thickness_ratio"] = ratio
        components["thickness"] = 1.0 / (1.0 + (np.log(ratio) / np.log(1.5)) ** 2) if np.isfinite(ratio) else 0.0
    if not components:  # nothing of the rim could be measured (e.g. all of it cut by the scan's edge)
        components["rim"] = UNMEASURED
    stray, stray_gap = _stray_fraction(skull, box, crop, holes, centre, cfg, rim.second_defect_fraction)
    measures.update(stray_fraction=stray, stray_gap_mm=stray_gap)
    components["pieces"] = max(0.0, 1.0 - cfg.stray_weight * stray)
    score = float(np.prod(list(components.values())))
    return ImplantQuality(score, components, measures, _explain(score, components, measures))
