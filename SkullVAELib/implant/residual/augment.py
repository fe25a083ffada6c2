"""Spatial augmentation of the cranial residual's training crops: a random affine and an elastic warp.

The crops come from a pool of rim fits made once (:mod:`.pool`); every step warps them afresh, so
the network sees skulls of other orientations, sizes and local shapes than the pool's. The ranges
and the field are the VAE's (:mod:`SkullVAELib.data.augment`: rotation, scale, shear, a smooth
displacement field on a coarse control grid), applied in one ``grid_sample`` to all channels at
once so that the inputs and the target stay in register. Translation is left to the crop offsets.

Two channels need care:

- the rim fit's signed distance (``inputs[:, 1]``, mm / ``sdf_clip_mm``) is a distance, so it is
  divided by the warp's mean scale (a warp that enlarges the skull by 5 % puts every voxel 5 %
  further from the surface, in mm of the warped crop);
- the loss weight (neither bone nor ignored) stays 0/1: the warped weight is thresholded at 0.5.

Outside the crop the border values are repeated (``padding_mode="border"``): a rotation of 8° moves
a 64³ crop's corners by about 3 voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from SkullVAELib.data.augment import AugmentConfig, affine_theta, elastic_control_points, elastic_field, random_affine

SDF_CHANNEL = 1


def crop_augment_config(spacing_mm: float) -> AugmentConfig:
    """The VAE's affine and elastic ranges on crops of ``spacing_mm`` voxels, without translation,
    mirroring (the residual's trainer mirrors) or fresh defects."""
    return AugmentConfig(spacing_mm=(spacing_mm,) * 3, translation_mm=0.0, p_mirror=0.0, p_cranial=0.0, p_facial=0.0)


def warp_crops(
    inputs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp a batch of crops with one random affine and elastic field per crop.

    Args:
        inputs: (B, 3, X, Y, Z) float32: bone fraction, signed distance / clip, mirrored bone.
        target: (B, 1, X, Y, Z) float32 implant fraction in [0, 1].
        weight: (B, 1, X, Y, Z) float32 0/1 loss weight.
        cfg: ranges and probabilities (``spacing_mm`` is the crop's voxel size).
        gen: the CPU generator that draws every parameter (the same draws on any device).

    Returns:
        The warped (inputs, target, weight), same shapes; the distance rescaled and clipped to
        [-1, 1], the target in [0, 1], the weight 0/1.
    """
    n, grid = inputs.shape[0], tuple(inputs.shape[2:])
    spacing = cfg.resolved_spacing(grid)
    matrix, _ = random_affine(n, cfg, gen)
    use_affine = torch.rand(n, generator=gen, dtype=torch.float64) < cfg.p_affine
    matrix = torch.where(use_affine.view(n, 1, 1), matrix, torch.eye(3, dtype=torch.float64).expand(n, 3, 3))
    control = elastic_control_points(n, grid, spacing, cfg, gen)
    use_elastic = torch.rand(n, generator=gen, dtype=torch.float64) < cfg.p_elastic
    control = control * use_elastic.view(n, 1, 1, 1, 1)

    device = inputs.device
    theta = affine_theta(matrix, torch.zeros(n, 3, dtype=torch.float64), grid, spacing)
    sample_at = F.affine_grid(theta.to(device, torch.float32), [n, 1, *grid], align_corners=False)
    sample_at = sample_at + elastic_field(control, grid, spacing, device)
    stacked = torch.cat([inputs, target, weight], dim=1).float()
    warped = F.grid_sample(stacked, sample_at, mode="bilinear", padding_mode="border", align_corners=False)

    scale = torch.linalg.det(matrix).abs().pow(1.0 / 3.0).to(device, torch.float32).view(n, 1, 1, 1)
    out_inputs = warped[:, :3].clone()
    out_inputs[:, SDF_CHANNEL] = (out_inputs[:, SDF_CHANNEL] / scale).clamp(-1.0, 1.0)
    return out_inputs, warped[:, 3:4].clamp(0.0, 1.0), (warped[:, 4:5] > 0.5).float()
