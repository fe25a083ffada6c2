"""The rim fit checked on the patient's own intact vault: how well would it fill this hole elsewhere?

The rim fit cannot be scored against a truth the patient does not have. But the same fill can be
tried where the truth is known: the hole's outline is moved rigidly over the sphere of ray
directions (its centre along great circles, 40-85° away in 8 compass directions, the nearest first)
to up to 8 places where the patient's vault is intact; those rays are hidden, filled from their own
rim exactly as the hole was (the median over ring widths, the mirror cue where one is given), and
the fill is scored against the bone that is there. The median of those scores estimates this
implant's DSC on this skull: the same outline (so the same size and rim length), the same bone
thickness and the same skull's shape. It ranks the true DSC (Spearman +0.35 on the test split,
+0.47 on 167 fresh-seed training pairs) where the rim-agreement quality score cannot (−0.04, −0.08),
but it does not say where the error lies: corrections taken from the places' errors lose
(docs/results/issue-24-2026-12-06.md, "The rim fit checked on the patient's own intact vault").

Scoring is in ray space (:func:`interval_dsc`): the radial interval [inner, outer radius] per ray,
each ray weighted by its solid angle and r² dr, which matches a voxel DSC to about ±0.002 on
SkullFix (docs/results/issue-24-2026-12-05.md, "Where the rim fit's remaining error lies").
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from SkullVAELib.implant import raycast
from SkullVAELib.implant.raymarch import cpu_threads
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimcue import cue_rays, usable_shapes
from SkullVAELib.implant.rimfit import RimFitResult, fill_hole
from SkullVAELib.implant.rimmedian import median_fill, ring_widths
from SkullVAELib.implant.scanedge import ScanEdge, cell_solid_angle
from SkullVAELib.implant.shapebank import ShapeBank
from SkullVAELib.implant.shapemodel import ShapeModel
from SkullVAELib.io.image import SkullImage

_SQUARE = np.ones((3, 3), dtype=bool)

#: a hole's centre is moved along great circles in these many compass directions ...
HEADINGS = 8
#: ... by these angles (degrees)
DISTANCES_DEG: tuple[float, ...] = (40.0, 55.0, 70.0, 85.0)
#: a moved hole and its inner rim stay above this elevation (the z of a ray's unit direction, LPS: up):
#: below it the rays meet the skull base, the orbits and the temporal fossa, no smooth vault
MIN_UP = -0.3
#: the check stops after this many usable places (the nearest first): ≈ 0.2 s each on a SkullFix skull
MAX_PLACES = 8
#: fewer places than this: the note calls the estimate rough (a hole of 1 sr or more leaves 1-2 places)
FEW_PLACES = 3


@dataclass
class SelfCheck:
    """The rim fit on the hole's outline moved over the intact vault.

    Attributes:
        scores: each place's ray-space DSC.
        outer_rms_mm: each place's RMS error of the filled outer surface (mm).
    """

    scores: list[float] = field(default_factory=list)
    outer_rms_mm: list[float] = field(default_factory=list)

    @property
    def places(self) -> int:
        """How many places were scored."""
        return len(self.scores)

    @property
    def dsc(self) -> float:
        """The estimate: the median of the places' scores (NaN without a place)."""
        return float(np.median(self.scores)) if self.scores else float("nan")

    def summary(self) -> dict[str, float | None]:
        """JSON-able: the median DSC, the number of places, the lowest and highest place (None: no place)."""
        if not self.scores:
            return {"dsc": None, "places": 0, "lowest": None, "highest": None}
        return {"dsc": self.dsc, "places": self.places, "lowest": min(self.scores), "highest": max(self.scores)}

    def note(self) -> str:
        """One line for the user."""
        if not self.scores:
            return "the rim fit could not be tried elsewhere on this skull: no intact place of the vault takes the hole"
        spread = f" ({min(self.scores):.2f}-{max(self.scores):.2f})" if self.places > 1 else ""
        where = "place" if self.places == 1 else "places"
        rough = "; so few places make it a rough estimate" if self.places < FEW_PLACES else ""
        return (
            f"the rim fit, tried on {self.places} intact {where} of this skull's vault with the hole's outline, "
            f"scored DSC {self.dsc:.2f}{spread} there{rough}"
        )


def interval_dsc(p_in, p_out, t_in, t_out, omega) -> float:
    """DSC of radial intervals [inner, outer] (mm) per ray, each weighted by its solid angle ``omega``
    and r² dr (arrays of one shape; NaN: no interval)."""

    def volume(a, b):
        with np.errstate(invalid="ignore"):
            return np.where(b > a, (b**3 - a**3) / 3.0, 0.0)

    both = np.nansum(omega * volume(np.maximum(t_in, p_in), np.minimum(t_out, p_out)))
    total = np.nansum(omega * volume(t_in, t_out)) + np.nansum(omega * volume(p_in, p_out))
    return float(2.0 * both / total) if total > 0 else float("nan")


def moves(direction: np.ndarray) -> list[Rotation]:
    """Rotations that carry a hole centred on the unit ``direction`` (3,) along great circles: each of
    ``DISTANCES_DEG`` (nearest first) in each of ``HEADINGS`` compass directions."""
    e1 = np.cross(direction, [0.0, 0.0, 1.0] if abs(direction[2]) < 0.9 else [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(direction, e1)
    headings = np.arange(HEADINGS) * 2.0 * np.pi / HEADINGS
    axes = [np.cos(h) * e1 + np.sin(h) * e2 for h in headings]
    return [Rotation.from_rotvec(np.deg2rad(d) * axis) for d in DISTANCES_DEG for axis in axes]


def moved_cells(cells: np.ndarray, step_deg: float, rotation: Rotation) -> np.ndarray:
    """bool (Nα, Nβ): ``cells`` rotated rigidly by ``rotation`` (LPS)."""
    dirs = raycast.grid_directions(step_deg)
    row, col, _ = raycast.nearest_cells(rotation.apply(np.array(dirs.reshape(-1, 3)), inverse=True), step_deg)
    return cells[row, col].reshape(cells.shape)


def usable_place(moved: np.ndarray, raymap: raycast.RayMap, keep_out: np.ndarray, cfg: RimFitConfig) -> bool:
    """True where ``moved`` lies on intact vault: every ray of it hits bone, none is in ``keep_out`` (the
    defect and its band, the scan's edge), and it and its inner rim point above ``MIN_UP``."""
    if not moved.any() or (moved & keep_out).any() or not raymap.hit[moved].all():
        return False
    near = ndimage.binary_dilation(moved, _SQUARE, iterations=cfg.ring[0])
    return bool((raymap.elevation()[near] >= MIN_UP).all())  # LPS's up, in a turned grid too


def _hidden(raymap: raycast.RayMap, cells: np.ndarray) -> raycast.RayMap:
    """``raymap`` with the rays of ``cells`` made misses."""
    r_out, r_in = raymap.r_out.copy(), raymap.r_in.copy()
    r_out[cells] = np.nan
    r_in[cells] = np.nan
    return replace(raymap, hit=raymap.hit & ~cells, r_out=r_out, r_in=r_in)


def intact_places(raymap: raycast.RayMap, hole: Hole, cfg: RimFitConfig, edge: ScanEdge | None = None) -> list[Hole]:
    """The first ``MAX_PLACES`` of ``hole``'s outline moved (:func:`moves`, the nearest first) that lie on
    intact vault (:func:`usable_place`; ``edge``: the scan's edge, whose truncated and unknown rays are kept out)."""
    keep_out = ndimage.binary_dilation(~raymap.hit | hole.cells, _SQUARE, iterations=cfg.band)
    if edge is not None:
        keep_out |= edge.truncated | edge.unknown
    omega = np.broadcast_to(cell_solid_angle(raymap.step_deg), raymap.hit.shape)
    places = []
    for rotation in moves(hole.direction):
        cells = moved_cells(hole.cells, raymap.step_deg, rotation)
        if usable_place(cells, raymap, keep_out, cfg):
            place = Hole(cells, float(omega[cells].sum()), rotation.apply(hole.direction), unusable=hole.unusable)
            places.append(place)  # its rim skips the rays whose bone the scan's edge cuts, as the hole's does
            if len(places) >= MAX_PLACES:
                break
    return places


def _try_place(raymap, hole: Hole, place: Hole, cfg: RimFitConfig, mirror_for, shapes) -> tuple[float, float]:
    """(ray-space DSC, RMS error of the outer surface in mm) of the fill of ``place``'s hidden rays."""
    hidden = _hidden(raymap, place.cells | hole.cells)  # the defect's grown rays are no rim data either
    # only the place's own rays are scored: a band of one cell (not the implant's) spares the splines'
    # evaluation at the rays around it (the fill inside the place is the same)
    cfg = replace(cfg, band=1)
    mirror = None
    if mirror_for is not None:
        mirror = mirror_for(cue_rays([place.cells], max(*ring_widths(cfg), cfg.band)))  # a place does not grow
    _, r_in, r_out = median_fill(hidden, place, cfg, mirror, shapes, fill_hole)
    omega = np.broadcast_to(cell_solid_angle(raymap.step_deg), raymap.hit.shape)
    score = interval_dsc(r_in, r_out, raymap.r_in, raymap.r_out, np.where(place.cells, omega, 0.0))
    err = (r_out - raymap.r_out)[place.cells]
    return score, float(np.sqrt(np.nanmean(err**2)))


def self_check(
    raymap: raycast.RayMap,
    hole: Hole,
    cfg: RimFitConfig,
    edge: ScanEdge | None = None,
    mirror_for: Callable[[np.ndarray], raycast.RayMap | None] | None = None,
    shapes: ShapeBank | ShapeModel | None = None,
    threads: int | None = None,
) -> SelfCheck:
    """The rim fit (:func:`rimfit.fill_hole`, the median over ring widths) of ``hole``'s outline at places where
    the vault is intact (:func:`intact_places`), scored against the patient's bone there.

    Args:
        raymap: the patient's rays (the defect's among the misses).
        hole: the hole as filled (grown).
        edge: the scan's edge; its truncated and unknown rays are kept out.
        mirror_for: bool (Nα, Nβ) rays → the mirrored skull's rays there (or None: no mirror cue).
        shapes: the shape cue where the mirror has none (:mod:`rimcue`), as the hole's fill had it.
        threads: places filled at once (default: the ray casting's CPU threads); the result does not depend on it.
    """
    places = intact_places(raymap, hole, cfg, edge)
    workers = max(1, min(len(places), threads or cpu_threads()))
    with ThreadPoolExecutor(workers) as pool:  # part of the splines' work releases the GIL (≈ 10 % on 2 cores)
        tried = list(pool.map(lambda place: _try_place(raymap, hole, place, cfg, mirror_for, shapes), places))
    kept = [(score, rms) for score, rms in tried if np.isfinite(score)]  # no bone on either side: no score
    return SelfCheck([score for score, _ in kept], [rms for _, rms in kept])


def check_rim_fit(
    skull: SkullImage,
    result: RimFitResult,
    cfg: RimFitConfig | None = None,
    mirror_transform: np.ndarray | None = None,
    shapes: ShapeBank | ShapeModel | None = None,
) -> SelfCheck:
    """:func:`self_check` of ``result``'s largest hole on ``skull`` (``result`` from :func:`rimfit.rim_fit`
    with the same ``cfg``, ``mirror_transform`` and ``shapes``); an empty check when it found no hole."""
    if not result.holes:
        return SelfCheck()
    skull, mirror_transform = result.in_frame(skull, mirror_transform)  # the frame the rays were cast in
    raymap = result.raymap
    mirror_for = None
    if mirror_transform is not None:

        def mirror_for(rays: np.ndarray) -> raycast.RayMap:
            step = raymap.step_deg
            return raycast.cast(skull, raymap.centre, step, transform=mirror_transform, exact=raymap.exact, rays=rays)

    cfg = (cfg or RimFitConfig()).for_voxels(skull.spacing)
    shapes, _ = usable_shapes(shapes, cfg.step_deg, result.turn)  # the rim fit said already when they are not used
    return self_check(raymap, result.holes[0], cfg, result.edge, mirror_for, shapes)
