"""Whether a mask is a skull's bone at all: two wrong inputs that a completion took for a complete skull.

An inverted mask (the skull 0, everything else 1) and a filled cranium (a head mask, or the skull and the brain as
one label) leave every ray from the cranium in bone: the completion said "no cranial defect found ... a complete
skull has nothing to fill", and sent the user looking for a defect. No skull scan holds what each of them does:
bone over most of the scan's border, or bone at the cranium's centre. :func:`check_is_a_skull` refuses both in one
line that says which, before any work.
"""

from __future__ import annotations

import numpy as np

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage

# bone in this share of the voxels of the scan's six faces is no skull in air: an inverted mask (SkullFix's 220
# skull masks, complete, defective and the extra skulls: at most 0.024, where the scan cuts the skull base)
BORDER_BONE_SHARE = 0.5
# bone in this share of a ball of CENTRE_BALL_MM (mm) about the cranial centre is a filled cranium (SkullFix's 220
# skull masks: at most 0.004; a calcified pineal gland of 6 mm at the centre fills 0.03 of the ball)
CENTRE_BONE_SHARE = 0.5
CENTRE_BALL_MM = 10.0


def check_is_a_skull(skull: SkullImage) -> None:
    """Raise SkullVAEError (one line naming the file) where ``skull``'s mask is inverted (bone over more than
    :data:`BORDER_BONE_SHARE` of the scan's border) or fills the cranium (bone over more than
    :data:`CENTRE_BONE_SHARE` of the ball of :data:`CENTRE_BALL_MM` about the cranial centre)."""
    source = skull.metadata.get("source")
    border = border_bone_share(skull.mask)
    if border > BORDER_BONE_SHARE:
        raise SkullVAEError(
            f"{100 * border:.0f} % of the scan's border is bone: an inverted mask (the skull 0, the rest nonzero)? "
            "give the skull's bone as nonzero",
            source,
        )
    centre = centre_bone_share(skull)
    if centre > CENTRE_BONE_SHARE:
        raise SkullVAEError(
            f"the cranium is filled ({100 * centre:.0f} % bone within {CENTRE_BALL_MM:g} mm of its centre): a head "
            "mask, or the skull and the brain as one label? give the skull's bone alone",
            source,
        )


def border_bone_share(mask: np.ndarray) -> float:
    """The share of the voxels on the six faces of ``mask`` (bool (I, J, K)) that are bone (edges counted on each
    face they lie on)."""
    faces = [mask[index] for axis in range(3) for index in _face_indices(axis)]
    return float(sum(np.count_nonzero(f) for f in faces)) / max(sum(f.size for f in faces), 1)


def _face_indices(axis: int) -> tuple[tuple, tuple]:
    """The index tuples of the first and the last plane of ``axis``."""
    first, last = [slice(None)] * 3, [slice(None)] * 3
    first[axis], last[axis] = 0, -1
    return tuple(first), tuple(last)


def centre_bone_share(skull: SkullImage) -> float:
    """The share of bone in the ball of :data:`CENTRE_BALL_MM` about the voxel nearest ``skull``'s cranial centre
    (the part inside the scan; 0 where the centre lies outside it)."""
    from SkullVAELib.implant.postprocess import ball
    from SkullVAELib.implant.raycast import cranial_centre

    affine = skull.index_to_physical()
    near = np.round(np.linalg.solve(affine[:3, :3], cranial_centre(skull) - affine[:3, 3])).astype(int)
    element = ball(CENTRE_BALL_MM, skull.spacing)  # the direction is orthonormal: voxels times spacing are mm
    reach = np.array(element.shape) // 2
    lo, hi = np.maximum(near - reach, 0), np.minimum(near + reach + 1, skull.shape)
    if np.any(lo >= hi):
        return 0.0
    inside = element[tuple(slice(a - (n - r), b - (n - r)) for a, b, n, r in zip(lo, hi, near, reach, strict=True))]
    region = skull.mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return float(np.count_nonzero(region & inside)) / max(np.count_nonzero(inside), 1)
