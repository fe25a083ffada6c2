"""depth_mm is scipy's exact Euclidean distance transform, computed by SimpleITK."""

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.implant.distance import depth_mm


@pytest.mark.parametrize("order", ["C", "F"])
def test_equals_scipy_on_anisotropic_blobs(order):
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((30, 25, 20)) > 0.35, iterations=1)
    mask = np.asarray(mask, order=order)
    spacing = (0.41, 0.55, 1.25)
    ours = depth_mm(mask, spacing)
    assert ours.shape == mask.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ndimage.distance_transform_edt(mask, sampling=spacing), rtol=1e-6, atol=1e-5)


def test_a_plate_is_measured_across_its_thickness():
    mask = np.zeros((9, 9, 12), bool)
    mask[:, :, 3:8] = True  # 5 voxels of 2 mm: the middle voxel is 3 voxels (6 mm) from the outside
    depth = depth_mm(mask, (1.0, 1.0, 2.0))
    assert depth[4, 4, 5] == pytest.approx(6.0) and depth[4, 4, 3] == pytest.approx(2.0)
    assert (depth[~mask] == 0).all()


def test_empty_and_full_masks():
    assert not depth_mm(np.zeros((4, 4, 4), bool), (1, 1, 1)).any()
    assert np.isinf(depth_mm(np.ones((4, 4, 4), bool), (1, 1, 1))).all()
