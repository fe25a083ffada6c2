"""A residual 3D U-Net laid out layer for layer like MONAI's ``UNet`` (``spatial_dims=3``,
``norm="instance"``, PReLU, no dropout, kernel 3, "NDA" order), with MONAI's parameter names, so
that weights of either load into the other unchanged (tested in test_unet.py).

Hand-built rather than imported for the same reason as :mod:`SkullVAELib.vae.networks`: importing
MONAI costs about 3 s, which is a large share of one facial completion (docs/BENCHMARKS.md);
MONAI stays the training loss and the reference in the tests.

The tree (``model`` the top level):

* ``Sequential(down, SkipConnection(sub), up)`` per level; ``sub`` the next level or, at the
  bottom, a stride-1 residual unit; the skip concatenates the level's input and ``sub``'s output;
* down: a residual unit with ``res_units`` convolution blocks, the first of stride 2, and a
  residual convolution (kernel 3 with stride 2, kernel 1 when only the channels change);
* up: a transposed convolution block of stride 2, then a one-block residual unit (its block a
  bare convolution at the top level).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from SkullVAELib.core.errors import SkullVAEError


class ConvolutionBlock(nn.Sequential):
    """MONAI's ``Convolution``: ``conv`` (Conv3d or ConvTranspose3d, kernel 3, padding 1), then
    ``adn`` = InstanceNorm3d (no affine) → PReLU, unless ``conv_only``."""

    def __init__(self, cin: int, cout: int, stride: int, transposed: bool = False, conv_only: bool = False) -> None:
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(cin, cout, 3, stride=stride, padding=1, output_padding=stride - 1)
        else:
            self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        if not conv_only:
            self.adn = nn.Sequential()
            self.adn.add_module("N", nn.InstanceNorm3d(cout))
            self.adn.add_module("A", nn.PReLU())


class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``conv`` = ``units`` blocks (``unit0`` of stride ``stride``), plus
    ``residual`` (identity, or a convolution when the stride or the channels change)."""

    def __init__(self, cin: int, cout: int, stride: int, units: int, last_conv_only: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        units = max(1, units)
        for i in range(units):
            only = last_conv_only and i == units - 1
            self.conv.add_module(
                f"unit{i}", ConvolutionBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, False, only)
            )
        self.residual: nn.Module = nn.Identity()
        if stride != 1:
            self.residual = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        elif cin != cout:
            self.residual = nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class SkipConnection(nn.Module):
    """``cat([x, submodule(x)])`` along the channels, as MONAI's ``SkipConnection``."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class UNet(nn.Module):
    """(B, in_channels, X, Y, Z) -> (B, out_channels, X, Y, Z); each side a multiple of
    ``2 ** (len(channels) - 1)``; ``channels`` features per level, stride 2 between levels."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], res_units: int = 1) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError(f"a U-Net needs at least two levels of channels, got {channels}")
        self.res_units = int(res_units)
        self.model = self._level(int(in_channels), int(out_channels), channels, is_top=True)

    def _down(self, cin: int, cout: int, stride: int) -> nn.Module:
        if self.res_units > 0:
            return ResidualUnit(cin, cout, stride, self.res_units)
        return ConvolutionBlock(cin, cout, stride)

    def _up(self, cin: int, cout: int, is_top: bool) -> nn.Module:
        up = ConvolutionBlock(cin, cout, 2, transposed=True, conv_only=is_top and self.res_units == 0)
        if self.res_units == 0:
            return up
        return nn.Sequential(up, ResidualUnit(cout, cout, 1, 1, last_conv_only=is_top))

    def _level(self, cin: int, cout: int, channels: list[int], is_top: bool) -> nn.Sequential:
        width = channels[0]
        if len(channels) > 2:
            sub: nn.Module = self._level(width, width, channels[1:], is_top=False)
            up_in = 2 * width
        else:
            sub = self._down(width, channels[1], 1)  # the bottom: stride 1
            up_in = width + channels[1]
        return nn.Sequential(self._down(cin, width, 2), SkipConnection(sub), self._up(up_in, cout, is_top))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def check_crop(crop_shape: Sequence[int], channels: Sequence[int], what: str) -> None:
    """SkullVAEError unless ``crop_shape`` (3 sides, voxels) suits a :class:`UNet` of ``channels`` levels (``what``
    names the network in the message): three multiples of its depth step 2^(levels - 1), not all equal to it
    (the deepest level would be one voxel, which instance norm refuses)."""
    step = 2 ** (len(channels) - 1)
    shape = tuple(crop_shape)
    if len(shape) != 3 or any(s < step or s % step for s in shape) or shape == (step,) * 3:
        raise SkullVAEError(f"{what} crop {shape} must be 3 multiples of {step} (the U-Net depth), not all {step}")
