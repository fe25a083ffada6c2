"""Model-grid mapping: area/nearest down, trilinear/nearest up, round-trip Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SkullVAELib.data.grid import downsample_mask, from_model_grid, to_model_grid
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import SkullImage, read_skull


def _shell(shape=(60, 52, 40), thickness=0.12) -> SkullImage:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    return SkullImage((r > 0.7) & (r < 0.7 + thickness), origin=(1.0, 2.0, 3.0), spacing=(0.5, 0.5, 0.7))


def test_area_is_box_mean_for_any_memory_layout():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 30, 23)) > 0.6
    expected = F.adaptive_avg_pool3d(torch.from_numpy(mask).float()[None, None], (16, 12, 10))[0, 0].numpy()
    for layout in (mask, np.asfortranarray(mask), mask[:, ::-1, :][:, ::-1, :]):
        out = downsample_mask(layout, (16, 12, 10))
        assert out.dtype == np.float32 and out.shape == (16, 12, 10) and out.flags.c_contiguous
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_area_keeps_bone_fraction_on_integer_ratios():
    skull = _shell((64, 48, 32))
    occupancy = to_model_grid(skull, (32, 24, 16))
    assert 0.0 <= occupancy.min() and occupancy.max() <= 1.0
    assert occupancy.mean() == pytest.approx(skull.mask.mean(), rel=1e-5)
    assert 0 < np.count_nonzero((occupancy > 0) & (occupancy < 1))  # soft at the borders


def test_nearest_matches_torch_and_monai_nearest():
    rng = np.random.default_rng(1)
    mask = rng.random((41, 37, 23)) > 0.5
    for grid in ((16, 16, 8), (64, 40, 23)):
        down = downsample_mask(mask, grid, "nearest")
        expected = F.interpolate(torch.from_numpy(mask).float()[None, None], size=grid, mode="nearest")[0, 0].numpy()
        assert np.array_equal(down, expected)
        assert set(np.unique(down)) <= {0.0, 1.0}
        prob = rng.random(grid, dtype=np.float32)
        up = from_model_grid(prob, SkullImage(mask, np.zeros(3), np.ones(3)), "nearest")
        assert np.array_equal(
            up, F.interpolate(torch.from_numpy(prob)[None, None], size=mask.shape, mode="nearest")[0, 0].numpy()
        )


def test_from_model_grid_shape_and_types():
    skull = _shell()
    prob = torch.full((1, 1, 16, 16, 8), 0.25)
    up = from_model_grid(prob, skull)
    assert up.shape == skull.shape and up.dtype == np.float32
    np.testing.assert_allclose(up, 0.25, atol=1e-7)
    with pytest.raises(ValueError):
        from_model_grid(np.zeros((4, 4)), skull)
    with pytest.raises(ValueError):
        to_model_grid(skull, (16, 16, 8), mode="cubic")


def test_round_trip_area_beats_nearest_on_thin_shell():
    skull = _shell((96, 96, 64), thickness=0.08)
    scores = {}
    for mode in ("area", "nearest"):
        back = from_model_grid(to_model_grid(skull, (48, 48, 32), mode), skull, mode)
        scores[mode] = dice(back > 0.5, skull.mask)
    assert scores["area"] > 0.9
    assert scores["area"] > scores["nearest"]


@pytest.mark.skullfix
@pytest.mark.parametrize("case", ["000", "005", "047"])  # 000, 005 oblique; 047 axis-aligned
def test_skullfix_round_trip_dice(skullfix_dir, case):
    skull = read_skull(skullfix_dir / "complete_skull" / f"{case}.nrrd")
    area = dice(from_model_grid(to_model_grid(skull, (256, 256, 128)), skull) > 0.5, skull.mask)
    nearest = from_model_grid(to_model_grid(skull, (256, 256, 128), "nearest"), skull, "nearest")
    assert area >= 0.97
    assert dice(nearest > 0.5, skull.mask) < area


@pytest.mark.parametrize("shape", [(64, 64, 40), (63, 64, 40), (64, 48, 30)])
def test_area_down_sampling_equals_adaptive_average_pooling(shape):
    """Both the integer-factor fast path and the general path are box means (adaptive_avg_pool3d)."""
    import torch
    import torch.nn.functional as F

    from SkullVAELib.data.grid import downsample_mask

    rng = np.random.default_rng(1)
    mask = rng.random(shape) > 0.6
    grid = (16, 16, 10)
    expected = F.adaptive_avg_pool3d(torch.from_numpy(mask).float()[None, None], grid)[0, 0].numpy()
    np.testing.assert_allclose(downsample_mask(mask, grid), expected, atol=1e-6)
