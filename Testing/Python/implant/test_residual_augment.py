"""The residual's crop warps (implant/residual/augment.py): register every channel, keep distances in mm."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from SkullVAELib.implant.residual.augment import crop_augment_config, warp_crops

GRID = (24, 24, 24)


def _crops(n: int = 2):
    """A plane x = centre as the rim fit's surface: distance ramp, implant fraction and weight beside it."""
    x = (torch.arange(GRID[0], dtype=torch.float32) - (GRID[0] - 1) / 2).view(1, 1, -1, 1, 1) * 2.0  # mm
    sdf = (x / 12.0).clamp(-1, 1).expand(n, 1, *GRID)
    bone = (x.abs() < 3).float().expand(n, 1, *GRID)
    inputs = torch.cat([bone, sdf, bone.flip(2)], 1).contiguous()
    target = (x > 0).float().expand(n, 1, *GRID).contiguous()
    weight = (bone < 0.5).float()
    return inputs, target, weight


def _cfg(**changes):
    return dataclasses.replace(crop_augment_config(2.0), **changes)


def test_no_warp_leaves_every_channel_as_it_was():
    inputs, target, weight = _crops()
    out = warp_crops(inputs, target, weight, _cfg(p_affine=0.0, p_elastic=0.0), torch.Generator().manual_seed(0))
    for before, after in zip((inputs, target, weight), out, strict=True):
        assert after.shape == before.shape
        torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_scaled_crop_keeps_its_distances_in_mm(seed):
    """A plane through the centre stays where it is; its distance ramp follows the x scale over the mean scale."""
    from SkullVAELib.data.augment import random_affine

    inputs, target, weight = _crops(1)
    cfg = _cfg(p_affine=1.0, p_elastic=0.0, rotation_deg=0.0, shear=0.0, scale=0.3)
    gen = torch.Generator().manual_seed(seed)
    state = gen.get_state()
    out_inputs, out_target, _ = warp_crops(inputs, target, weight, cfg, gen)
    matrix, _ = random_affine(1, cfg, gen.set_state(state))  # the warp's own draw
    sx, mean_scale = float(matrix[0, 0, 0]), float(torch.linalg.det(matrix) ** (1 / 3))
    assert abs(sx - 1) > 0.01
    centre = slice(8, 16)
    expected = (inputs[:, 1, centre] * sx / mean_scale).clamp(-1, 1)
    torch.testing.assert_close(out_inputs[:, 1, centre], expected, atol=2e-3, rtol=0)
    assert torch.equal(out_target[:, 0, 13:] > 0.5, inputs[:, 1, 13:] > 0)


def test_a_warped_batch_stays_in_range_and_in_register():
    inputs, target, weight = _crops(4)
    out_inputs, out_target, out_weight = warp_crops(
        inputs, target, weight, _cfg(p_affine=1.0, p_elastic=1.0, elastic_mm=3.0), torch.Generator().manual_seed(3)
    )
    assert out_inputs[:, 1].abs().max() <= 1.0 and 0.0 <= out_target.min() and out_target.max() <= 1.0
    assert set(out_weight.unique().tolist()) <= {0.0, 1.0}
    assert not torch.allclose(out_inputs, inputs)
    # the implant's side of the warped surface is where the warped distance is positive
    inside = out_inputs[:, 1] > 0.1
    assert (out_target[:, 0][inside] > 0.5).float().mean() > 0.99


def test_the_same_generator_state_gives_the_same_warp():
    crops = _crops(2)
    a = warp_crops(*crops, _cfg(p_affine=1.0, p_elastic=1.0), torch.Generator().manual_seed(7))
    b = warp_crops(*crops, _cfg(p_affine=1.0, p_elastic=1.0), torch.Generator().manual_seed(7))
    for left, right in zip(a, b, strict=True):
        assert torch.equal(left, right)
