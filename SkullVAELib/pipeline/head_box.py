"""The head of a scan that holds more than a head (a trauma patient's whole-body CT, a head-and-trunk scan).

Every stage finds the skull by its bone: the ray centre is a sphere fitted to the upper half of the bone, the
mirror plane is the whole mask's, the pieces apart from the skull are judged against the largest. Below a head, a
spine, ribs and a pelvis outweigh the skull: a SkullFix skull set on 300 mm of such bone got an implant 220 mm from
its hole (DSC 0). Where the bone spans more along the patient's S axis than a head does (:data:`HEAD_SPAN_MM`),
the completion runs on the top of it (LPS +S is the head's end whatever way the patient lay in the scanner): a box
about the bone within :data:`HEAD_SPAN_MM` of its top, padded by ``core.config.MISSING_CAP_MM``, with the bone
below that cut left out; the results are pasted back onto the scan's own grid, where the rest of the bone is the
patient's as it was. A head alone (SkullFix's skulls span 140-150 mm) is completed as before, untouched.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from SkullVAELib.core.config import MISSING_CAP_MM
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.io.image import SkullImage

# vertex to chin of an adult head is 220-250 mm; bone spanning more is a head on a neck and a trunk
HEAD_SPAN_MM = 260.0
_STRIDE = 2  # a body scan's bone is read on every second voxel along each axis (within a voxel: enough for 260 mm)


@dataclass(frozen=True)
class HeadBox:
    """Where the head lies in a scan that holds more.

    Attributes:
        box: (3,) index slices of the scan holding the head's bone and ``core.config.MISSING_CAP_MM`` about it.
        cut_mm: the patient's S coordinate (LPS z, mm) below which bone is left out.
        span_mm: how far the scan's bone spans along S (mm).
    """

    box: tuple[slice, slice, slice]
    cut_mm: float
    span_mm: float

    def crop(self, skull: SkullImage) -> SkullImage:
        """The head of ``skull``: its mask within :attr:`box`, bone below :attr:`cut_mm` cleared, on the box's grid
        (the same spacing and direction; the origin at the box's first voxel)."""
        mask = skull.mask[self.box] & self._above_cut(skull)
        start = np.array([s.start for s in self.box], dtype=np.float64)
        origin = skull.origin + skull.direction @ (start * skull.spacing)
        metadata = dict(skull.metadata, head_box=[(s.start, s.stop) for s in self.box])
        return SkullImage(mask, origin, skull.spacing.copy(), skull.direction.copy(), metadata)

    def paste(self, skull: SkullImage, head: np.ndarray, below: np.ndarray | None) -> np.ndarray:
        """A mask on ``skull``'s grid: ``head`` (bool, the box's shape) inside :attr:`box` above the cut, ``below``
        (bool, ``skull``'s shape; None: nothing) elsewhere."""
        full = np.zeros(skull.shape, dtype=bool) if below is None else below.copy()
        above = self._above_cut(skull)
        full[self.box][above] = head[above]
        return full

    def note(self) -> str:
        """The warning a result made on the head alone carries."""
        return (
            f"the scan's bone spans {self.span_mm:.0f} mm from head to foot, more than a head: the implant was made "
            f"from its top {HEAD_SPAN_MM:.0f} mm (the head); the bone below is the patient's as scanned"
        )

    def _above_cut(self, skull: SkullImage) -> np.ndarray:
        """bool (the box's shape): the box's voxels at or above :attr:`cut_mm` along S (one plane of S at a time:
        S is linear in the index, and a box of a body scan holds a hundred million voxels)."""
        affine = skull.index_to_physical()
        s_of = affine[2, :3]
        i, j, k = (np.arange(s.start, s.stop, dtype=np.float64) for s in self.box)
        plane = affine[2, 3] + s_of[0] * i[:, None] + s_of[1] * j[None, :]
        above = np.empty(tuple(len(a) for a in (i, j, k)), dtype=bool)
        for n, index in enumerate(k):
            np.greater_equal(plane + s_of[2] * index, self.cut_mm, out=above[:, :, n])
        return above


def find_head(skull: SkullImage) -> HeadBox | None:
    """The :class:`HeadBox` of ``skull`` where its bone spans more than :data:`HEAD_SPAN_MM` along the patient's S
    axis; None for a head alone (or no bone)."""
    box = bounding_box(skull.mask)  # numpy, along the memory order (no torch in a rim-fit batch's workers)
    if box is None:
        return None
    affine = skull.index_to_physical()
    corners = np.array(list(itertools.product(*[(s.start, s.stop - 1) for s in box])), dtype=np.float64)
    s_corners = corners @ affine[2, :3] + affine[2, 3]
    if s_corners.max() - s_corners.min() <= HEAD_SPAN_MM:  # the box's corners bound the bone's extent along S
        return None
    index = np.argwhere(skull.mask[::_STRIDE, ::_STRIDE, ::_STRIDE]) * _STRIDE  # an oblique grid's exact extent
    s_mm = index @ affine[2, :3] + affine[2, 3]
    top, span = float(s_mm.max()), float(s_mm.max() - s_mm.min())
    if span <= HEAD_SPAN_MM:
        return None
    cut = top - HEAD_SPAN_MM
    head = index[s_mm >= cut]
    pad = np.ceil(MISSING_CAP_MM / skull.spacing).astype(int) + _STRIDE
    low = np.maximum(head.min(axis=0) - pad, 0)
    high = np.minimum(head.max(axis=0) + pad + 1, skull.shape)
    return HeadBox(tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True)), cut, span)


def on_the_scan(head_box: HeadBox, skull: SkullImage, completion):
    """``completion`` (a :class:`~SkullVAELib.pipeline.result.Completion` of ``head_box.crop(skull)``) on
    ``skull``'s own grid: the implant and the uncertainty pasted into the box, the completed skull the head's
    within it and the patient's bone elsewhere; its warnings lead with :meth:`HeadBox.note`."""
    implant = head_box.paste(skull, completion.implant.mask, None)
    completed = head_box.paste(skull, completion.completed.mask, skull.mask)
    uncertainty = completion.uncertainty
    if uncertainty is not None:
        full = np.zeros(skull.shape, dtype=uncertainty.dtype)
        full[head_box.box] = uncertainty
        uncertainty = full
    return dataclasses.replace(
        completion,
        implant=skull.with_mask(implant, title="implant"),
        completed=skull.with_mask(completed, title=completion.completed.metadata.get("title", "completed")),
        uncertainty=uncertainty,
        warnings=[head_box.note(), *completion.warnings],
    )
