"""What the rim's splines correct inside a hole: the patient's mirrored skull, or similar skulls.

The rim fit continues the rim across a hole by thin-plate splines (:mod:`rimspline`). Given a cue, a
ray map that has bone where the hole is, the splines carry only the rim's residual against it, and the
cue brings the shape the rim cannot tell: the mirrored skull where it covers the hole (the patient's
own other side), else the mean of a shape bank's nearest complete skulls (:mod:`shapebank`) or the
installed shape model fitted to the rim (:mod:`shapemodel`).
"""

from __future__ import annotations

import numpy as np

from SkullVAELib.implant import raycast
from SkullVAELib.implant.shapebank import ShapeBank, shape_cue
from SkullVAELib.implant.shapemodel import ShapeModel, model_cue

MIN_RIM_COVER = 0.9  # a cue must have bone on more than this share of the rim rays used ...
MIN_HOLE_COVER = 0.95  # ... and of the hole's rays


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
