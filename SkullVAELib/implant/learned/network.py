"""The refiner network: MONAI's residual 3D U-Net, one input channel (the defective skull's bone)
and one output channel (implant logits), shapes (B, 1, X, Y, Z) -> (B, 1, X, Y, Z)."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from SkullVAELib.implant.learned.config import RefinerConfig


def refiner_network(cfg: RefinerConfig) -> torch.nn.Module:
    """A U-Net with ``cfg.channels`` features per level (stride 2 between levels), instance norm;
    with ``cfg.output_head`` it outputs ``channels[0]`` features and a 1×1×1 convolution the logits."""
    unet = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=cfg.channels[0] if cfg.output_head else 1,
        channels=cfg.channels,
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.res_units,
        norm="instance",
    )
    if not cfg.output_head:
        return unet
    return torch.nn.Sequential(unet, torch.nn.Conv3d(cfg.channels[0], 1, kernel_size=1))
