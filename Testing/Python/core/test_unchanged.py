"""Holding an array read-only for one piece of work, and the cache key that trusts the hold."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.core.unchanged import fingerprint, hold_unchanged
from SkullVAELib.implant import raycast, raymarch
from SkullVAELib.io.image import SkullImage


def _mask() -> np.ndarray:
    mask = np.zeros((20, 18, 16), dtype=bool, order="F")
    mask[4:15, 5:12, 3:13] = True
    return mask


def test_a_held_array_is_read_only_until_the_hold_ends_even_after_an_error():
    mask = _mask()
    with pytest.raises(RuntimeError), hold_unchanged(mask):
        with pytest.raises(ValueError, match="read-only"):
            mask[0, 0, 0] = True
        raise RuntimeError("the work failed")
    assert mask.flags.writeable
    mask[0, 0, 0] = True  # the user's array is theirs again


def test_nested_holds_are_one_and_a_read_only_array_stays_read_only():
    mask = _mask()
    with hold_unchanged(mask):
        with hold_unchanged(mask):
            pass
        assert not mask.flags.writeable  # the inner hold did not hand it back early
    assert mask.flags.writeable
    frozen = _mask()
    frozen.flags.writeable = False
    with hold_unchanged(frozen):
        pass
    assert not frozen.flags.writeable


def test_the_fingerprint_names_the_hold_and_counts_outside_it():
    mask = _mask()
    counted = fingerprint(mask)
    assert counted[2] == int(mask.sum())
    with hold_unchanged(mask):
        first = fingerprint(mask)
        assert first[2][0] == "held" and fingerprint(mask) == first
    with hold_unchanged(mask):
        assert fingerprint(mask) != first  # a later hold is another: the mask may have changed between
    assert fingerprint(mask) == counted
    other = mask.copy(order="K")  # equal content, another array: never taken for the held one
    with hold_unchanged(mask):
        assert fingerprint(other) == counted


def test_a_listing_made_during_a_hold_is_not_trusted_once_the_mask_changed_after_it():
    mask = _mask()
    with hold_unchanged(mask):
        assert raycast.bone_count(mask) == int(mask.sum())
        blocks = raymarch._occupancy(mask)[0].copy()
    mask[0, 0, 0] = True  # an edit after the hold
    assert raycast.bone_count(mask) == int(mask.sum())
    assert raycast.bone_points(SkullImage(mask, np.zeros(3), np.ones(3), np.eye(3))).shape[0] == int(mask.sum())
    assert not np.array_equal(raymarch._occupancy(mask)[0], blocks)  # the corner block is occupied now
