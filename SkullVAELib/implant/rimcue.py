"""What the rim's splines correct inside a hole: the patient's mirrored skull, or similar skulls.

The rim fit continues the rim across a hole by thin-plate splines (:mod:`rimspline`). Given a cue, a
ray map that has bone where the hole is, the splines carry only the rim's residual against it, and the
cue brings the shape the rim cannot tell: the mirrored skull where it covers the hole (the patient's
own other side), else the mean of a shape bank's nearest complete skulls (:mod:`shapebank`) or the
installed shape model fitted to the rim (:mod:`shapemodel`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from SkullVAELib.implant import raycast
from SkullVAELib.implant.gridturn import GridTurn
from SkullVAELib.implant.shapebank import ShapeBank, shape_cue
from SkullVAELib.implant.shapemodel import ShapeModel, model_cue

MIN_RIM_COVER = 0.9  # a cue must have bone on more than this share of the rim rays used ...
MIN_HOLE_COVER = 0.95  # ... and of the hole's rays


def cue_rays(holes: list[np.ndarray], reach: int) -> np.ndarray:
    """bool (Nα, Nβ): the rays a cue is read on, every ray within ``reach`` cells (8-neighbours, no
    wrap) of a hole as found (bool (Nα, Nβ) each). The rim fit grows a hole by at most ``grow_reach``
    cells, then reads the cue on its rim ring (``ring[1]`` cells out) and its band (``band`` cells):
    ``reach`` = ``grow_reach`` + max(``ring[1]``, ``band``)."""
    union = np.logical_or.reduce(holes)
    return ndimage.binary_dilation(union, np.ones((3, 3), dtype=bool), iterations=int(reach))


def usable_shapes(
    shapes: ShapeBank | ShapeModel | None, step_deg: float, turn: GridTurn | None = None
) -> tuple[ShapeBank | ShapeModel | None, list]:
    """(``shapes``, []) when they were made on the rim fit's angular grid, read in the frame of ``turn`` where the
    grid was turned off a pole (their maps are cast in LPS), else (None, [why not])."""
    if shapes is None:
        return None, []
    if abs(shapes.step_deg - step_deg) <= 1e-9:
        return (shapes if turn is None else shapes_in_frame(shapes, turn)), []
    return None, [
        f"the shape cue was made on a {shapes.step_deg:g}° ray grid and the rim fit casts on {step_deg:g}°: "
        "it is not used (rebuild it with `skullvae build-shapes --overwrite`)"
    ]


def shapes_in_frame(shapes: ShapeBank | ShapeModel, turn: GridTurn) -> ShapeBank | ShapeModel:
    """``shapes`` (made on the LPS grid) resampled, nearest cell, onto the grid turned by ``turn``: a copy whose
    maps a turned frame's cells index (a hole near a pole is filled in that frame; read as cast, the cue came
    from directions up to the turn's angle away)."""
    rows, cols = turn.lps_cells(shapes.step_deg)
    if isinstance(shapes, ShapeBank):
        return replace(shapes, r_out=shapes.r_out[:, rows, cols], thickness=shapes.thickness[:, rows, cols])
    position = np.cumsum(shapes.rays.ravel()).reshape(shapes.rays.shape) - 1  # each domain ray's index in mean/modes
    rays = shapes.rays[rows, cols]
    source = position[rows, cols][rays]
    return replace(
        shapes,
        rays=rays,
        mean=shapes.mean[source],
        modes=shapes.modes[:, source],
        thickness=shapes.thickness[rows, cols],
    )


def choose_cue(
    raymap: raycast.RayMap,
    hole: np.ndarray,
    direction: np.ndarray,
    ring: np.ndarray,
    rim_idx: np.ndarray,
    fill_idx: np.ndarray,
    mirror: raycast.RayMap | None,
    shapes: ShapeBank | ShapeModel | None,
    k: int,
) -> tuple[raycast.RayMap | None, str]:
    """(cue, the hole's source name): the mirror if it covers the hole, else ``shapes``' cue if it does
    (a bank's ``k`` nearest skulls, or a shape model fitted to the rim), else ``(None, "spline")``.

    Args:
        raymap: the patient's ray map; ``hole``, ``ring``: bool (Nα, Nβ) hole and rim rays;
            ``direction``: the hole's mean direction (3,).
        rim_idx, fill_idx: flat indices of the rim rays the splines use and of the rays they fill.
        k: a bank's members to average; 0 turns the shape cue off (a bank's or a model's).
    """
    in_hole = hole.ravel()[fill_idx]

    def covers(cue: raycast.RayMap | None) -> bool:
        if cue is None:
            return False
        outer = cue.r_out.ravel()
        rim_cover = np.isfinite(outer[rim_idx]).mean()
        return rim_cover > MIN_RIM_COVER and np.isfinite(outer[fill_idx])[in_hole].mean() > MIN_HOLE_COVER

    if covers(mirror):
        return mirror, "mirror+spline"
    if isinstance(shapes, ShapeModel) and k > 0:
        cue = model_cue(shapes, raymap, ring, hole)
        if covers(cue):
            return cue, "model+spline"
    elif shapes is not None and k > 0:
        cue = shape_cue(shapes, raymap, ring, hole, direction, k)
        if covers(cue):
            return cue, "shapes+spline"
    return None, "spline"
