"""What a volume's values are: a mask, a label map or a CT, and which of them are bone.

``detect_kind`` tells a mask (small non-negative integers) from a CT (air to bone in HU); ``bone_of_labels``
reads a mask's or a label map's bone: chosen labels, else every nonzero voxel; ``refuse_a_label_map`` refuses a
map of several labels with none chosen (a skull and a brain read together as bone close a cranial hole).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.config import INPUT_KINDS
from SkullVAELib.core.errors import SkullVAEError

_CT_MIN_BELOW = -200.0  # a CT holds air (≈ -1000 HU); a mask never has negatives
_CT_MAX_ABOVE = 300.0  # ... and bone above the threshold


def check_input_kind(kind: str) -> None:
    """SkullVAEError unless ``kind`` is one of :data:`~SkullVAELib.core.config.INPUT_KINDS`."""
    if kind not in INPUT_KINDS:
        raise SkullVAEError(f"kind must be {', '.join(INPUT_KINDS)}, got {kind!r}")


def detect_kind(values: np.ndarray, path: Path) -> str:
    """ "binary" for small non-negative integer labels, "ct" for HU-like ranges."""
    if values.dtype in (np.uint8, np.bool_):
        return "binary"
    if values.dtype.kind in "iu" and values.dtype.itemsize >= 2 and values.size:
        # one pass, not two (min and max: 0.1-0.2 s on a 512² × 300 int32 scan): a value in 0..255
        # is exactly one whose unsigned view is <= 255 (a negative one wraps to >= 2**15; not so
        # for int8, whose -1 is 255 unsigned: it takes the two passes below)
        if int(values.view(values.dtype.str.replace("i", "u")).max()) <= 255:
            return "binary"
    lo, hi = float(values.min()), float(values.max())
    integral = values.dtype.kind in "iub" or bool(np.array_equal(values, np.round(values)))
    if lo >= 0 and hi <= 255 and integral:
        return "binary"
    if lo < _CT_MIN_BELOW and hi > _CT_MAX_ABOVE:
        return "ct"
    raise SkullVAEError(
        f"neither a binary mask (values 0..255 integers) nor a CT (HU, air < {_CT_MIN_BELOW:g}): "
        f"values range {lo:g}..{hi:g}; force one with kind='binary' or kind='ct'",
        path,
    )


def bone_of_labels(values: np.ndarray, labels: Sequence[int] | None, path: Path) -> np.ndarray:
    """bool (K, J, I): the voxels of ``values`` (a mask's or a label map's) holding any of ``labels``; without
    labels every nonzero voxel. A chosen label that no voxel holds is refused in one line naming those held."""
    if not labels:
        return values != 0
    mask = np.isin(values, np.asarray(labels))
    if not mask.any():
        held = nonzero_values(values, values != 0)
        raise SkullVAEError(f"no voxel has the label(s) {list(labels)} (the volume holds {_listed(held)})", path)
    return mask


def refuse_a_label_map(values: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """Refuse, in one line that lists them, a volume whose nonzero voxels (``mask``, bool like ``values``) hold
    several values where every nonzero voxel would be read as bone: a label map of a skull and a brain (the brain
    closes a cranial hole: "no cranial defect found"), or a scan stored as 0..255."""
    held = nonzero_values(values, mask)
    if len(held) > 1:
        raise SkullVAEError(
            f"the volume holds {len(held)} values ({_listed(held)}): a label map? choose the skull's label with "
            "--segment N (repeat it for several), or take every nonzero voxel as bone with --input-kind binary (a "
            "scan stored as 0..255: --input-kind ct with --hu-threshold in its own units)",
            path,
        )


def _listed(held: list[int]) -> str:
    """The first few of ``held``, for a message."""
    return ", ".join(map(str, held[:8])) + (", ..." if len(held) > 8 else "")


def nonzero_values(values: np.ndarray, mask: np.ndarray) -> list[int]:
    """The distinct values of ``values`` where ``mask`` is set, ascending (one copy of the bone's values; sorted
    only where they are not all one value)."""
    held = values[mask]
    if held.size == 0:
        return []
    if not (held != held.flat[0]).any():
        return [int(held.flat[0])]
    return [int(v) for v in np.unique(held)]
