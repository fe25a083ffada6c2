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
    with pytest.raises(SkullVAEError, match="a gap of 8.00 mm where the slices are 2.00 mm apart"):
        stack_slices(np.delete(_positions(8, [0, 0, 2]), [3, 4, 5], axis=0), ROW, COLUMN, (1, 1), (4, 4), "f")
    uneven_tilted = np.delete(_positions(8, [0, 0.2, 2]), 3, axis=0)
    with pytest.raises(SkullVAEError, match="missing or uneven slices .*a tilted gantry's"):
        stack_slices(uneven_tilted, ROW, COLUMN, (0.5, 0.5), (4, 4), "f")
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


def test_uneven_slices_are_blended_onto_the_finest_step():
    """A missing slice, or two slice distances in one series: each slice of the regular grid lies between the two
    scanned about its height, weighted by its distance from each."""
    heights = np.array([0.0, 2.0, 4.0, 8.0, 10.0])  # the slice at 6 mm is missing
    stack = stack_slices(_positions(1, [0, 0, 0]) + np.outer(heights, [0, 0, 1]), ROW, COLUMN, (0.5, 0.5), (3, 2), "f")
    size, spacing, _, direction = stack.regular_grid()
    assert size == (3, 2, 6) and spacing[2] == 2.0 and np.allclose(direction, np.eye(3))
    values = np.repeat(np.array([0, 20, 40, 80, 100], dtype=np.int16), 6).reshape(5, 2, 3)  # (K, J, I): 10 × height
    read = regularise(sitk.GetImageFromArray(values), stack)
    assert read.GetSize() == size and read.GetPixelID() == sitk.sitkInt16
    assert sitk.GetArrayFromImage(read)[:, 0, 0].tolist() == [0, 20, 40, 60, 80, 100]
    assert "unevenly spaced slices (steps 2.00-4.00 mm" in tilt_note(stack)[0]


def test_two_missing_slices_are_blended_and_a_stray_close_pair_does_not_set_the_step():
    """Positions as DICOM writes them (6 decimals) with two slices missing in a row: a gap of exactly three steps;
    100 slices of 1 mm with one more at 50.4 mm: the grid keeps 1 mm."""
    positions = np.round(_positions(48, [0.1, -0.2, 3.2]) @ np.eye(3), 6)
    direction = np.array([0.1, -0.2, 3.2]) / np.linalg.norm([0.1, -0.2, 3.2])
    row = np.cross(direction, COLUMN)
    row /= np.linalg.norm(row)
    column = np.cross(direction, row)
    gap = stack_slices(np.delete(positions, [20, 21], axis=0), row, column, (0.5, 0.5), (4, 4), "f")
    assert gap.heights is not None and gap.regular_grid()[0][2] == 48
    stray = np.sort(np.r_[np.arange(100.0), 50.4])
    stack = stack_slices(np.outer(stray, [0, 0, 1]), ROW, COLUMN, (0.5, 0.5), (4, 4), "f")
    assert stack.spacing[2] == 1.0 and stack.regular_grid()[0][2] == 100
