"""The β-VAE loss: soft Dice reconstruction + analytic KL divergence to N(0, I).

Scaling (the authors' code, so that β means what it means in the paper)::

    loss = dice_weight · Σ_batch DiceLoss_b + β · Σ_batch Σ_latent KLD_b,d      (dice_weight = 80)

With this scaling β = 100 makes the KLD dominate (posterior ≈ N(0, I), poor reconstruction)
and β = 1e-4 makes it negligible (good reconstruction, loosely regularised latents), the
paper's two regimes. A different Dice weight or a per-voxel mean would shift both regimes.

Why β = 100 collapses, and ``recon_scale``: one nat of KL costs β = 100, while the whole
Dice term of a sample is worth at most dice_weight · 1 = 80, so no code that carries
information can pay for itself and q(z|x) = N(0, I) is the optimum (issue 11, measured).
``recon_scale`` multiplies the reconstruction term (default 1 = the paper):
loss = recon_scale · dice_weight · Σ_batch Dice_b + β · Σ_batch Σ_latent KLD. It is a
documented normalisation of the Dice term, equivalent to dividing β by ``recon_scale``;
the informative aggregated VAE uses β = 100 with the scale chosen on validation.

Dice on the foreground only: the authors' ``DiceLoss(to_onehot_y=True, softmax=True,
include_background=True, reduction="sum")`` on a 2-channel head also summed the background
channel's Dice loss. The background fills ~90 % of the grid, so its Dice loss is a small
fraction of the foreground's and the two softmax channels are tied; we keep the foreground
term, which is what a 1-channel sigmoid head predicts, so the scales stay comparable.
(Their stage-1 VAE also applied MONAI's sigmoid *before* that softmax, which bounds the
foreground probability to (0.27, 0.73) and puts a floor under their Dice curve; we do not
reproduce that.)
"""

from __future__ import annotations

import torch


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Foreground soft Dice loss per sample, ``(B,)`` in [0, 1].

    ``1 − (2 Σ p·t + eps) / (Σ p + Σ t + eps)`` over all voxels of each sample, as MONAI's
    ``DiceLoss(sigmoid=False, smooth_nr=eps, smooth_dr=eps, reduction="none")``.
    Hand-written (3 lines) so it is computed in float32 even under bf16 autocast, and
    returns a flat ``(B,)``.

    Args:
        prob: foreground probabilities ``(B, 1, X, Y, Z)`` (or any ``(B, ...)``) in [0, 1].
        target: soft occupancy in [0, 1], same shape.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob {tuple(prob.shape)} and target {tuple(target.shape)} differ in shape")
    p = prob.float().flatten(1)
    t = target.float().flatten(1)
    intersection = (p * t).sum(1)
    denominator = p.sum(1) + t.sum(1)
    return 1.0 - (2.0 * intersection + eps) / (denominator + eps)


def kld_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample, summed over latent dims: ``(B, d) -> (B,)`` (nats).

    ``−½ Σ_d (1 + log σ² − μ² − σ²)``, in float32.
    """
    mu = mu.float()
    logvar = logvar.float()
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(
    prob: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    dice_weight: float = 80.0,
    recon_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The authors' β-VAE objective (see the module docstring for the scaling).

    Args:
        prob, target: ``(B, 1, X, Y, Z)`` foreground probability and soft target.
        mu, logvar: ``(B, d)`` posterior parameters (pass ``beta=0`` for stage 2, Dice only).
        beta: KLD weight β.
        dice_weight: the authors' 80.
        recon_scale: multiplies the Dice term in ``loss`` (1 = the paper; see the module docstring).

    Returns:
        ``loss``: scalar to backpropagate = ``recon_scale · dice + beta_kld``;
        ``dice``: dice_weight · Σ_batch soft Dice loss (the curve the paper plots);
        ``kld``: Σ_batch Σ_latent KLD; ``beta_kld``: β · kld;
        ``dice_per_sample``, ``kld_per_sample``: the unweighted ``(B,)`` terms.
    """
    dice_b = soft_dice_loss(prob, target)
    kld_b = kld_standard_normal(mu, logvar)
    dice = dice_weight * dice_b.sum()
    kld = kld_b.sum()
    beta_kld = beta * kld
    return {
        "loss": recon_scale * dice + beta_kld,
        "dice": dice,
        "kld": kld,
        "beta_kld": beta_kld,
        "dice_per_sample": dice_b,
        "kld_per_sample": kld_b,
    }
