"""A hollow skull mask: its vault's outer table apart from bone a few millimetres under it, and its tables joined.

A mask thresholded from a CT above its diploë (an elderly patient's fatty marrow, a child's thin skull, a soft
kernel) holds the vault's two tables with a void between them. Every ray of the rim fit then ends at the outer
table: the implant comes out as thin as that table, its rim agrees with it, and its quality score is high
(validation 057 from such a CT: DSC 0.36 at quality 0.98; docs/results/issue-24-2026-12-07.md, "A CT as a scanner
gives it"). A CT input is read at a lower threshold there (:mod:`SkullVAELib.io.ct_bone`); a mask cannot be, so
:func:`hollow_share` measures it on the rim fit's rays, :func:`join_tables` fills the space between its tables for
the rim fit to read, and :func:`hollow_note` tells the user.
"""

from __future__ import annotations

import numpy as np

from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.distance import depth_mm
from SkullVAELib.implant.rasterise import rasterise
from SkullVAELib.implant.raycast import RayMap, grid_directions
from SkullVAELib.implant.scanedge import cell_solid_angle
from SkullVAELib.io.image import SkullImage

# bone this deep (mm) under a ray's outer layer is the inner table of a hollow bone (SkullFix's vaults measure a
# median 8.8-10 mm along the rays, their tables 1-2 mm); under a solid vault lies the brain
UNDER_MM = (0.75, 10.0)
# rays of the vault this high (sine of the elevation over the horizontal): above the skull base's plates
VAULT_SINE = 0.5
# a mask with bone under the outer layer of more than this share of its vault reads hollow (SkullFix's 220 masks:
# median 0.002, at most 0.18; validation's skulls from CTs with a 200 HU diploë, thresholded at 300 HU: 0.84-0.97)
HOLLOW_RAYS = 0.25
# the tables are joined on rays down to the horizontal (a vault defect's rim reaches it), and the fill's pinholes
# between the rays closed by this much (mm; after the rays alone 12-29 % of validation's hollow vaults still read
# hollow, after the closing 0.2-0.4 %)
JOIN_SINE = 0.0
JOIN_CLOSING_MM = 2.0
_SAMPLE_MM = 0.25
_EVERY = 2  # every second ray each way: the share, not the map


def hollow_share(skull: SkullImage, rays: RayMap) -> float:
    """The share of ``rays``' vault (hit rays, elevation sine ≥ :data:`VAULT_SINE`; each by its cell's solid angle,
    so that it does not depend on where the grid's poles lie) whose rays meet bone again :data:`UNDER_MM` under
    their outer layer's inner surface (``rays.r_in``), on ``skull`` as the rays saw it."""
    directions = grid_directions(rays.step_deg)[::_EVERY, ::_EVERY]
    solid_angle = np.broadcast_to(cell_solid_angle(rays.step_deg)[::_EVERY], directions.shape[:2])
    vault = rays.hit[::_EVERY, ::_EVERY] & (rays.elevation()[::_EVERY, ::_EVERY] >= VAULT_SINE)
    if not vault.any():
        return 0.0
    depth = _depth_to_bone(skull, rays.centre, directions[vault], rays.r_in[::_EVERY, ::_EVERY][vault])
    weights = solid_angle[vault]
    return float(weights[np.isfinite(depth)].sum() / weights.sum())


def table_gaps(skull: SkullImage, rays: RayMap) -> np.ndarray:
    """float32 (Nα, Nβ) mm: how deep under each ray's outer layer (``rays.r_in``) it meets bone again within
    :data:`UNDER_MM`, on hit rays of elevation sine ≥ :data:`JOIN_SINE`; NaN elsewhere."""
    directions = grid_directions(rays.step_deg)
    rays_in = rays.hit & (rays.elevation() >= JOIN_SINE)
    gaps = np.full(rays.hit.shape, np.nan, dtype=np.float32)
    gaps[rays_in] = _depth_to_bone(skull, rays.centre, directions[rays_in], rays.r_in[rays_in])
    return gaps


def join_tables(skull: SkullImage, rays: RayMap) -> np.ndarray:
    """bool (I, J, K): ``skull``'s mask with the space between its tables filled, as a solid bone's would be.

    On each ray of :func:`table_gaps` the voxels between its outer layer's inner surface and the bone under it
    (its rasterised shell, :func:`~SkullVAELib.implant.rasterise.rasterise`), then the result closed by
    :data:`JOIN_CLOSING_MM` about the filled part of the grid, which the rays' cells leave pinholed. ``rays``: cast
    on ``skull`` (in the frame they were cast in: the same voxels)."""
    gaps = table_gaps(skull, rays)
    region = np.isfinite(gaps)
    joined = skull.mask | rasterise(
        skull, rays.centre, rays.step_deg, region, rays.r_in - np.nan_to_num(gaps), rays.r_in
    )
    filled = bounding_box(joined & ~skull.mask)
    if filled is None:
        return joined
    return joined | _closed_within(joined, skull, filled, JOIN_CLOSING_MM)


def _closed_within(mask: np.ndarray, skull: SkullImage, box: tuple[slice, ...], radius_mm: float) -> np.ndarray:
    """bool (I, J, K): ``mask`` closed by a ball of ``radius_mm`` (on ``skull``'s spacing) inside the index ``box``,
    nothing outside it. Worked out on the box grown by the radius, so that bone crossing the box's faces is not
    closed against them, and with no bone beyond the grid's faces (as :func:`~SkullVAELib.implant.cleanup.
    binary_closing` reads them). Two exact distance maps (:func:`~SkullVAELib.implant.distance.depth_mm`, ITK's
    Maurer: linear in the voxels), where ITK's ball-shaped ``BinaryMorphologicalClosing`` took 6.6 s against their
    4.0 s on a whole SkullFix skull's box at 2 mm."""
    grow = [int(np.ceil(radius_mm / s)) + 2 for s in skull.spacing]
    starts = [b.start - g for b, g in zip(box, grow, strict=True)]
    stops = [b.stop + g for b, g in zip(box, grow, strict=True)]
    wide = tuple(slice(max(0, a), min(n, z)) for a, z, n in zip(starts, stops, skull.shape, strict=True))
    pads = [(w.start - a, z - w.stop) for a, z, w in zip(starts, stops, wide, strict=True)]
    part = np.pad(mask[wide], pads)  # beyond the grid: no bone
    grown = part | (depth_mm(~part, skull.spacing) <= radius_mm)
    closed = depth_mm(grown, skull.spacing) > radius_mm
    out = np.zeros_like(mask)
    out[box] = closed[tuple(slice(g, g + b.stop - b.start) for g, b in zip(grow, box, strict=True))]
    return out


def _depth_to_bone(skull: SkullImage, centre: np.ndarray, directions: np.ndarray, r_in: np.ndarray) -> np.ndarray:
    """float32 (n,) mm: the first depth of :data:`UNDER_MM` (every ``_SAMPLE_MM``) under ``r_in`` (n,) mm along
    ``directions`` (n, 3) from ``centre`` at which ``skull`` holds bone (its nearest voxel, as the rays read it);
    NaN where none does (a sample outside the grid reads no bone)."""
    depths = np.arange(UNDER_MM[0], UNDER_MM[1] + 1e-6, _SAMPLE_MM)
    radii = r_in[:, None] - depths[None, :]  # (n, depths) mm from the centre
    points = centre + directions[:, None, :] * radii[..., None]  # (n, depths, 3) LPS mm
    index = np.rint(skull.physical_to_index(points)).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(skull.shape)), axis=-1)
    index[~inside] = 0
    bone = skull.mask[index[..., 0], index[..., 1], index[..., 2]] & inside
    return np.where(bone.any(axis=1), depths[np.argmax(bone, axis=1)], np.nan).astype(np.float32)


def hollow_note(share: float, kind: str = "binary", joined: bool = False) -> list[str]:
    """The warning for a skull whose :func:`hollow_share` is over :data:`HOLLOW_RAYS`, else none; ``kind``: how it
    was read ("ct": from a CT's threshold, else a mask); ``joined``: its tables were joined (:func:`join_tables`)."""
    if share <= HOLLOW_RAYS:
        return []
    what = (
        "give a lower bone threshold (--hu-threshold)"
        if kind == "ct"
        else "segment the bone at a lower threshold, or give the CT itself"
    )
    done = (
        "the space between its tables was filled for the rim fit; check the implant's thickness, or "
        if joined
        else "the implant takes the outer table's thickness: "
    )
    return [
        f"the skull reads hollow: under the outer table of {100 * share:.0f} % of the vault lies more bone within "
        f"{UNDER_MM[1]:g} mm (a diploë under the bone threshold?); " + done + what
    ]


def still_hollow_note(share: float) -> list[str]:
    """The warning for a skull whose tables were joined and whose :func:`hollow_share` is still over
    :data:`HOLLOW_RAYS` (bone deeper than :data:`UNDER_MM` under the outer table), else none."""
    if share <= HOLLOW_RAYS:
        return []
    return [
        f"after its tables were joined, {100 * share:.0f} % of the vault still reads hollow (bone more than "
        f"{UNDER_MM[1]:g} mm under the outer table?): the implant may be thinner than the bone around it"
    ]
