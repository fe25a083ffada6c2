"""The refiner network: MONAI's residual 3D U-Net, one input channel (the defective skull's bone)
and one output channel (implant logits), shapes (B, 1, X, Y, Z) -> (B, 1, X, Y, Z).

It takes plain numbers, not the settings (``RefinerConfig.network()`` calls it), so that the
settings module and this one do not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet


def refiner_network(channels: Sequence[int], res_units: int = 1, output_head: bool = False) -> torch.nn.Module:
    """A U-Net with ``channels`` features per level (stride 2 between levels), instance norm; with
    ``output_head`` it outputs ``channels[0]`` features and a 1×1×1 convolution the logits."""
    channels = tuple(int(c) for c in channels)
    unet = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=channels[0] if output_head else 1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        norm="instance",
    )
    if not output_head:
        return unet
    return torch.nn.Sequential(unet, torch.nn.Conv3d(channels[0], 1, kernel_size=1))
