"""Whether a skull mask is hollow: its vault's outer table apart from bone a few millimetres under it.

A mask thresholded from a CT above its diploë (an elderly patient's fatty marrow, a child's thin skull, a soft
kernel) holds the vault's two tables with a void between them. Every ray of the rim fit then ends at the outer
table: the implant comes out as thin as that table, its rim agrees with it, and its quality score is high
(validation 057 from such a CT: DSC 0.36 at quality 0.98; docs/results/issue-24-2026-12-07.md, "A CT as a scanner
gives it"). A CT input is read at a lower threshold there (:mod:`SkullVAELib.io.ct_bone`); a mask cannot be, so
:func:`hollow_share` measures it on the rim fit's rays and :func:`hollow_note` asks the user to look.
"""

from __future__ import annotations

import numpy as np

from SkullVAELib.implant.raycast import RayMap, angle_grid, grid_directions
from SkullVAELib.io.image import SkullImage

# bone this deep (mm) under a ray's outer layer is the inner table of a hollow bone (SkullFix's vaults measure a
# median 8.8-10 mm along the rays, their tables 1-2 mm); under a solid vault lies the brain
UNDER_MM = (0.75, 10.0)
# rays of the vault this high (sine of the elevation over the horizontal): above the skull base's plates
VAULT_SINE = 0.5
# a mask with bone under the outer layer of more than this share of its vault reads hollow (SkullFix's 220 masks:
# median 0.002, at most 0.18; validation's skulls from CTs with a 200 HU diploë, thresholded at 300 HU: 0.84-0.97)
HOLLOW_RAYS = 0.25
_SAMPLE_MM = 0.25
_EVERY = 2  # every second ray each way: the share, not the map


def hollow_share(skull: SkullImage, rays: RayMap) -> float:
    """The share of ``rays``' vault (hit rays, elevation sine ≥ :data:`VAULT_SINE`; each by its cell's solid angle,
    so that it does not depend on where the grid's poles lie) whose rays meet bone again :data:`UNDER_MM` under
    their outer layer's inner surface (``rays.r_in``), on ``skull`` as the rays saw it."""
    directions = grid_directions(rays.step_deg)[::_EVERY, ::_EVERY]
    alpha, _ = angle_grid(rays.step_deg)
    solid_angle = np.broadcast_to(np.sin(alpha[::_EVERY])[:, None], directions.shape[:2])
    vault = rays.hit[::_EVERY, ::_EVERY] & (directions @ np.asarray(rays.up, dtype=np.float64) >= VAULT_SINE)
    if not vault.any():
        return 0.0
    depths = np.arange(UNDER_MM[0], UNDER_MM[1] + 1e-6, _SAMPLE_MM)
    radii = rays.r_in[::_EVERY, ::_EVERY][vault][:, None] - depths[None, :]  # (n, depths) mm from the centre
    points = rays.centre + directions[vault][:, None, :] * radii[..., None]  # (n, depths, 3) LPS mm
    index = np.rint(skull.physical_to_index(points)).astype(np.int64)  # the nearest voxel, as the rays read it
    inside = np.all((index >= 0) & (index < np.array(skull.shape)), axis=-1)
    index[~inside] = 0
    bone = skull.mask[index[..., 0], index[..., 1], index[..., 2]] & inside
    weights = solid_angle[vault]
    return float(weights[bone.any(axis=1)].sum() / weights.sum())


def hollow_note(share: float, kind: str = "binary") -> list[str]:
    """The warning for a skull whose :func:`hollow_share` is over :data:`HOLLOW_RAYS`, else none; ``kind``: how it
    was read ("ct": from a CT's threshold, else a mask)."""
    if share <= HOLLOW_RAYS:
        return []
    what = (
        "give a lower bone threshold (--hu-threshold)"
        if kind == "ct"
        else "segment the bone at a lower threshold, or give the CT itself"
    )
    return [
        f"the skull reads hollow: under the outer table of {100 * share:.0f} % of the vault lies more bone within "
        f"{UNDER_MM[1]:g} mm (a diploë under the bone threshold?); the implant takes the outer table's thickness: "
        + what
    ]
