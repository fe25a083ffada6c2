"""Arrays held read-only for one piece of work, so that caches keyed on them need not re-read them.

A cache of something derived from a whole-scan mask (its bone listing, its block occupancy, its
mirror plane) must know that the mask it is asked about is the one it saw. Without a hold it
checks the array's shape, strides and bone count, and the count is a pass over the whole scan
(≈ 5 ms on a SkullFix mask, asked about 15 times per case). The
:class:`~SkullVAELib.pipeline.completer.Completer` holds the skull's mask read-only while it
completes it (:func:`hold_unchanged`); while it is held, :func:`fingerprint` names it by the hold
instead of counting, and any write into it raises (the Completer never modifies a mask). The hold
ends with the work: the array is writeable again, and a cache entry made during the hold no longer
matches (the next question counts again).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_HOLDS: dict[int, tuple[weakref.ref, int]] = {}  # id(array) -> (the array, its hold's number)
_NUMBERS = itertools.count(1)


@contextmanager
def hold_unchanged(array: np.ndarray) -> Iterator[np.ndarray]:
    """Make ``array`` read-only for the ``with`` block (its writeable flag is restored after).

    Nested holds of the same array are one hold (the outermost restores the flag).
    """
    held = _HOLDS.get(id(array))
    if held is not None and held[0]() is array:
        yield array
        return
    was_writeable = bool(array.flags.writeable)
    array.flags.writeable = False
    _HOLDS[id(array)] = (weakref.ref(array), next(_NUMBERS))
    try:
        yield array
    finally:
        _HOLDS.pop(id(array), None)
        if was_writeable:
            array.flags.writeable = True


def fingerprint(array: np.ndarray) -> tuple:
    """A cache key of ``array``'s content: (shape, strides, token). The token is the hold's number
    while ``array`` is held by :func:`hold_unchanged` (and still read-only), else its count of
    nonzero elements (a pass over the array)."""
    held = _HOLDS.get(id(array))
    if held is not None and held[0]() is array and not array.flags.writeable:
        return array.shape, array.strides, ("held", held[1])
    return array.shape, array.strides, int(np.count_nonzero(array))
