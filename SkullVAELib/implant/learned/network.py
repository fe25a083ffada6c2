"""The learned sources' network: a residual 3D U-Net laid out as MONAI's (:mod:`.unet`), ``in_channels`` inputs (the facial
refiner: the defective skull's bone; the cranial residual: bone, rim fit, mirror cue) and one output
channel (logits, or the residual's surface shift), shapes (B, C, X, Y, Z) -> (B, 1, X, Y, Z).

It takes plain numbers, not the settings (``RefinerConfig.network()`` calls it), so that the
settings module and this one do not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from SkullVAELib.implant.learned.unet import UNet


def refiner_network(
    channels: Sequence[int],
    res_units: int = 1,
    output_head: bool = False,
    in_channels: int = 1,
    zero_head: bool = False,
) -> torch.nn.Module:
    """A U-Net with ``channels`` features per level (stride 2 between levels), instance norm; with
    ``output_head`` it outputs ``channels[0]`` features and a 1×1×1 convolution the logits.

    (B, in_channels, X, Y, Z) -> (B, 1, X, Y, Z). ``zero_head`` starts that convolution at zero, so
    that an untrained network outputs 0 everywhere (the cranial residual starts at "no change").
    """
    channels = tuple(int(c) for c in channels)
    unet = UNet(int(in_channels), channels[0] if output_head else 1, channels, res_units)
    if not output_head:
        return unet
    head = torch.nn.Conv3d(channels[0], 1, kernel_size=1)
    if zero_head:
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return torch.nn.Sequential(unet, head)
