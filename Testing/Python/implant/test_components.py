"""implant.components: the same pieces as scipy's labelling, in any memory order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.implant.components import label_pieces

STRUCTURES = {6: ndimage.generate_binary_structure(3, 1), 18: ndimage.generate_binary_structure(3, 2),
              26: ndimage.generate_binary_structure(3, 3)}  # fmt: skip


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings split the voxels into the same pieces (numbers may differ)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0].astype(np.int64), b[b > 0].astype(np.int64)]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("order", ["C", "F", "strided"])
def test_the_pieces_scipy_finds(connectivity, order):
    rng = np.random.default_rng(connectivity)
    mask = ndimage.binary_opening(rng.random((30, 26, 22)) > 0.55)  # many pieces, some touching by corners
    mask = {"C": np.ascontiguousarray(mask), "F": np.asfortranarray(mask), "strided": mask[::-1, :, ::2]}[order]
    expected, n_expected = ndimage.label(mask, structure=STRUCTURES[connectivity])
    labels, n = label_pieces(mask, connectivity)
    assert labels.shape == mask.shape
    assert n == n_expected > 5
    assert set(np.unique(labels)) == set(range(n + 1))
    assert _same_partition(labels, expected)


def test_connectivity_decides_whether_corners_join():
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touching by a corner only
    assert label_pieces(mask, 26)[1] == 1
    assert label_pieces(mask, 18)[1] == label_pieces(mask, 6)[1] == 2


def test_empty_masks():
    labels, n = label_pieces(np.zeros((4, 5, 6), dtype=bool))
    assert n == 0 and not labels.any() and labels.shape == (4, 5, 6)
    labels, n = label_pieces(np.zeros((0, 5, 6), dtype=bool))
    assert n == 0 and labels.shape == (0, 5, 6)


def test_non_bool_masks_count_non_zero_voxels():
    mask = np.zeros((4, 4, 4), dtype=np.uint8)
    mask[0, 0, 0], mask[3, 3, 3] = 7, 1
    assert label_pieces(mask)[1] == 2


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_read_only_mask_is_labelled_and_left_as_it_is(order):
    """A mask the Completer holds read-only (core.unchanged): cc3d reads no read-only view ("buffer source array is
    read-only" on a SkullFix mask, SimpleITK's (K, J, I) array transposed), so it is labelled from a copy."""
    mask = np.zeros((6, 5, 4), dtype=bool) if order == "C" else np.zeros((4, 5, 6), dtype=bool).transpose(2, 1, 0)
    mask[0, 0, 0] = mask[4, 3, 2] = True
    mask.flags.writeable = False
    labels, n = label_pieces(mask)
    assert n == 2 and labels[0, 0, 0] != labels[4, 3, 2] and not mask.flags.writeable


@pytest.mark.parametrize("bad", [{"connectivity": 8}, {"mask": np.zeros((4, 4), dtype=bool)}])
def test_bad_arguments(bad):
    kwargs = {"mask": np.zeros((4, 4, 4), dtype=bool), "connectivity": 26} | bad
    with pytest.raises(ValueError):
        label_pieces(**kwargs)
