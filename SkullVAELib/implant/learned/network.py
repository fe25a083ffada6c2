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


class MirroredInput(torch.nn.Module):
    """``net`` fed its input and the input's left-right mirror as a second channel:
    (B, 1, X, Y, Z) -> net((B, 2, X, Y, Z)), the mirror flipping X about the crop's centre.

    The facial refiner's crop is centred on the skull's left-right centre, so the mirror puts the
    other side of the face at each voxel: where a facial defect is off the midline, the intact side
    shows the bone the hole lost, right where the network predicts it. A convolution cannot bring
    bone 40-100 mm away to a voxel, so the cue is handed to it. Parameter-free: its weights are
    ``net``'s under the prefix ``net.``.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, x.flip(2)], dim=1))


def refiner_network(
    channels: Sequence[int],
    res_units: int = 1,
    output_head: bool = False,
    in_channels: int = 1,
    zero_head: bool = False,
    mirror_input: bool = False,
) -> torch.nn.Module:
    """A U-Net with ``channels`` features per level (stride 2 between levels), instance norm; with
    ``output_head`` it outputs ``channels[0]`` features and a 1×1×1 convolution the logits.

    (B, in_channels, X, Y, Z) -> (B, 1, X, Y, Z). ``zero_head`` starts that convolution at zero, so
    that an untrained network outputs 0 everywhere (the cranial residual starts at "no change").
    ``mirror_input`` (one input channel only) wraps it in :class:`MirroredInput`.
    """
    channels = tuple(int(c) for c in channels)
    if mirror_input and in_channels != 1:
        raise ValueError("mirror_input mirrors a one-channel input")
    unet = UNet(2 if mirror_input else int(in_channels), channels[0] if output_head else 1, channels, res_units)
    net: torch.nn.Module = unet
    if output_head:
        head = torch.nn.Conv3d(channels[0], 1, kernel_size=1)
        if zero_head:
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
        net = torch.nn.Sequential(unet, head)
    return MirroredInput(net) if mirror_input else net
