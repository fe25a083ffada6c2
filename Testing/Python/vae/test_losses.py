"""Losses: soft Dice against MONAI and by hand, analytic KLD, the authors' scaling."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceLoss

from SkullVAELib.vae.losses import kld_standard_normal, soft_dice_loss, vae_loss


def test_soft_dice_by_hand():
    prob = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]).view(2, 1, 2, 2, 1)
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]).view(2, 1, 2, 2, 1)
    eps = 1e-5
    expected = torch.tensor([1 - (2 * 1 + eps) / (2 + 1 + eps), 1 - (2 * 1 + eps) / (2 + 2 + eps)])
    torch.testing.assert_close(soft_dice_loss(prob, target), expected)
    assert soft_dice_loss(target, target).abs().max() < 1e-6  # perfect
    empty = torch.zeros(1, 1, 2, 2, 2)
    assert soft_dice_loss(empty, empty).item() == pytest.approx(0.0)  # smoothing: 0/0 -> 0 loss


def test_soft_dice_matches_monai():
    torch.manual_seed(0)
    prob = torch.rand(3, 1, 8, 8, 8)
    target = torch.rand(3, 1, 8, 8, 8)  # soft targets
    monai = DiceLoss(include_background=True, sigmoid=False, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)
    torch.testing.assert_close(soft_dice_loss(prob, target), monai(prob, target).flatten(), rtol=1e-5, atol=1e-6)


def test_soft_dice_float32_under_bf16_autocast():
    torch.manual_seed(0)
    prob = torch.rand(2, 1, 16, 16, 16)
    target = (torch.rand(2, 1, 16, 16, 16) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = soft_dice_loss(prob.bfloat16(), target.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, soft_dice_loss(prob.bfloat16().float(), target), atol=1e-5, rtol=1e-5)


def test_soft_dice_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        soft_dice_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 3))


def test_kld_by_hand():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), 0.0]])
    # KL per dim = ½ (σ² + μ² − 1 − log σ²)
    expected = torch.tensor([0.0, 0.5 * (4 + 1 - 1 - math.log(4.0)) + 0.5 * 4])
    torch.testing.assert_close(kld_standard_normal(mu, logvar), expected)


def test_vae_loss_authors_scaling():
    torch.manual_seed(0)
    prob = torch.rand(4, 1, 4, 4, 4)
    target = (torch.rand(4, 1, 4, 4, 4) > 0.5).float()
    mu, logvar = torch.randn(4, 8), torch.randn(4, 8)
    out = vae_loss(prob, target, mu, logvar, beta=100.0)
    dice_b = soft_dice_loss(prob, target)
    kld_b = kld_standard_normal(mu, logvar)
    torch.testing.assert_close(out["dice"], 80.0 * dice_b.sum())
    torch.testing.assert_close(out["kld"], kld_b.sum())
    torch.testing.assert_close(out["beta_kld"], 100.0 * kld_b.sum())
    torch.testing.assert_close(out["loss"], 80.0 * dice_b.sum() + 100.0 * kld_b.sum())
    # The authors' KLD line: -0.5 * beta * sum(1 + logvar - mu² - exp(logvar)) over batch and latent.
    authors = -0.5 * 100.0 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    torch.testing.assert_close(out["beta_kld"], authors)
    assert out["dice_per_sample"].shape == out["kld_per_sample"].shape == (4,)


def test_vae_loss_backpropagates():
    prob = torch.rand(2, 1, 4, 4, 4, requires_grad=True)
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.zeros(2, 3, requires_grad=True)
    vae_loss(prob, torch.ones(2, 1, 4, 4, 4), mu, logvar, beta=1e-4)["loss"].backward()
    assert prob.grad is not None and prob.grad.abs().sum() > 0
