"""The refiner network: MONAI's residual 3D U-Net, one input channel (the defective skull's bone)
and one output channel (implant logits), shapes (B, 1, X, Y, Z) -> (B, 1, X, Y, Z)."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from SkullVAELib.refiner.config import RefinerConfig


def refiner_network(cfg: RefinerConfig) -> torch.nn.Module:
    """A U-Net with ``cfg.channels`` features per level (stride 2 between levels), instance norm."""
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=cfg.channels,
        strides=(2,) * (len(cfg.channels) - 1),
        num_res_units=cfg.res_units,
        norm="instance",
    )
