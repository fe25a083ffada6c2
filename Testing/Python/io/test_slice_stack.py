"""io.slice_stack: where a series' slices lie, and the regular grid a tilted gantry's series is resampled onto."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.slice_stack import regularise, stack_slices, tilt_note

ROW, COLUMN = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])


def _positions(count: int, step: np.ndarray, start=(10.0, -20.0, 5.0)) -> np.ndarray:
    return np.array(start) + np.outer(np.arange(count), step)


def test_a_regular_stack_is_its_own_grid_in_either_file_order():
    stack = stack_slices(_positions(5, [0, 0, 2.5]), ROW, COLUMN, (0.5, 0.6), (8, 9), "f")
    size, spacing, origin, direction = stack.regular_grid()
    assert not stack.tilted and size == (8, 9, 5) and np.allclose(spacing, [0.5, 0.6, 2.5])
    assert np.allclose(origin, [10, -20, 5]) and np.allclose(direction, np.eye(3))
    assert tilt_note(stack) == [] and regularise(sitk.Image(8, 9, 5, sitk.sitkInt16), stack).GetSize() == (8, 9, 5)
    downward = stack_slices(_positions(5, [0, 0, -2.5]), ROW, COLUMN, (0.5, 0.6), (8, 9), "f")
    assert np.allclose(downward.regular_grid()[3][:, 2], [0, 0, -1])  # slice k + 1 lies below slice k


def test_a_tilted_stacks_grid_lies_along_the_normal_and_holds_every_slice():
    lean = np.radians(20.0)
    step = 2.0 * np.array([0.0, -np.tan(lean), 1.0])  # 2 mm along the normal, moved back along the columns
    stack = stack_slices(_positions(30, step), ROW, COLUMN, (0.5, 0.5), (40, 50), "f")
    assert stack.tilted and stack.tilt_deg == pytest.approx(20.0)
    size, spacing, origin, direction = stack.regular_grid()
    assert np.allclose(direction, np.eye(3)) and np.allclose(spacing, [0.5, 0.5, 2.0])
    assert size == (40, 50 + round(29 * 2.0 * np.tan(lean) / 0.5), 30)
    corners = [stack.origin + stack.axes @ (np.array(c) * stack.spacing) for c in [(0, 0, 0), (39, 49, 29), (0, 0, 29)]]
    index = [np.linalg.solve(direction * spacing, c - origin) for c in corners]
    assert all(np.all(i > -1e-6) and np.all(i < np.array(size) - 1 + 1e-6) for i in index)
    assert "20.0°" in tilt_note(stack)[0] and "40x92x30 voxels" in tilt_note(stack)[0]


def test_a_stack_that_is_no_grid_is_refused():
    with pytest.raises(SkullVAEError, match="two slices at one position"):
        stack_slices(_positions(3, [0, 0, 0]), ROW, COLUMN, (1, 1), (4, 4), "f")
    with pytest.raises(SkullVAEError, match="missing or uneven slices"):
        stack_slices(np.delete(_positions(6, [0, 0, 2]), 3, axis=0), ROW, COLUMN, (1, 1), (4, 4), "f")
    wander = _positions(6, [0, 0, 2])
    wander[3] += [2.0, 0, 0]
    with pytest.raises(SkullVAEError, match="do not lie on one line"):
        stack_slices(wander, ROW, COLUMN, (1, 1), (4, 4), "f")
    with pytest.raises(SkullVAEError, match="60.0° off their normal"):
        stack_slices(_positions(6, [0, 2 * np.tan(np.radians(60)), 2]), ROW, COLUMN, (1, 1), (4, 4), "f")


def test_a_small_tilt_over_many_slices_is_a_tilt():
    """0.45° over 200 slices of 1 mm moves the last slice 1.6 mm (3 pixels) along its plane: resampled; the same
    lean over 20 slices (0.16 mm, under half a pixel) is a regular stack."""
    step = np.array([0.0, np.tan(np.radians(0.45)), 1.0])
    long = stack_slices(_positions(200, step), ROW, COLUMN, (0.5, 0.5), (8, 9), "f")
    short = stack_slices(_positions(20, step), ROW, COLUMN, (0.5, 0.5), (8, 9), "f")
    assert long.tilted and long.regular_grid()[0] == (8, 12, 200) and tilt_note(long)
    assert not short.tilted and short.regular_grid()[0] == (8, 9, 20) and not tilt_note(short)
