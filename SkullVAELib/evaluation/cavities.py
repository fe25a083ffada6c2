"""The true implant's own cavities: how much of an implant's error is the label's texture.

A SkullFix implant is the complete skull minus the defective one, so it keeps the complete skull's
voids: diploic spaces and vascular channels of the removed bone that the bone threshold left out
(0.3-0.7 ml on some skulls). Each void is a closed inner surface of the true implant. A solid implant
(what any source gives, and what is printed) fills them, and the surface distance counts every void
wall as far from any predicted surface: on three training pairs those walls alone lifted HD95 past
3 mm (docs/results/issue-24-2026-12-06.md, "The true implant's own cavities …").

:func:`enclosed_cavities` finds them, so that a benchmark can score an implant against the truth with
its cavities counted as implant beside the plain score (never in place of it).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.components import label_pieces

_FACES = ndimage.generate_binary_structure(3, 1)


def enclosed_cavities(implant: np.ndarray, bone: np.ndarray, margin: int = 4) -> np.ndarray:
    """bool (I, J, K): the voids of the complete skull (``implant`` ∪ ``bone``) that touch ``implant``.

    A void is a face-connected component of the background inside the implant's bounding box grown by
    ``margin`` voxels that does not reach the box's faces: enclosed by bone or implant on every side.
    The skull's hollow, the air outside and a channel that opens to either reach the box's faces and
    are no cavity. Empty implant: no cavity.

    Args:
        implant: bool (I, J, K), the true implant.
        bone: bool (I, J, K), the defective skull on the same grid.
        margin: voxels around the implant's box in which a void is looked for (≥ 1).
    """
    implant = np.asarray(implant, dtype=bool)
    bone = np.asarray(bone, dtype=bool)
    if implant.shape != bone.shape:
        raise ValueError(f"implant {implant.shape} and bone {bone.shape} must share one grid")
    out = np.zeros(implant.shape, dtype=bool)
    box = bounding_box(implant, margin=max(int(margin), 1))
    if box is None:
        return out
    labels, n = label_pieces(~(implant[box] | bone[box]), connectivity=6)
    if n == 0:
        return out
    open_labels = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            open_labels[np.take(labels, end, axis=axis)] = True
    touching = np.zeros(n + 1, dtype=bool)
    touching[labels[ndimage.binary_dilation(implant[box], _FACES)]] = True
    cavity = touching & ~open_labels
    cavity[0] = False
    out[box] = cavity[labels]
    return out
