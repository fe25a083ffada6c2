"""The β-VAE networks: encoder, decoder (also the decoupled decoder), reparameterisation.

Layer for layer the authors' MONAI ``VarAutoEncoder(spatial_dims=3, channels=(32, 64, 64,
128, 128, 256), strides=(2,)*6, latent_size=32, norm=BATCH, num_res_units=0)``, built from
blocks that mirror MONAI's ``Convolution`` block (conv → BatchNorm → PReLU, "NDA" order) with
the same parameter names, so MONAI-built weights load unchanged:

* encoder: N × [Conv3d k3 s2 p1 → BatchNorm3d → PReLU] → flatten → Linear μ, Linear log σ²;
* decoder: Linear → ReLU → reshape → N × [ConvTranspose3d k3 s2 p1 op1 → BatchNorm3d →
  PReLU], the last block a bare transposed conv → one foreground probability per voxel.

Every decoder head is reduced to one *foreground logit* ``ℓ`` with probability
``sigmoid(ℓ)``: a 1-channel head outputs ℓ directly; a 2-channel head (the authors'
softmax head) gives ``ℓ = out[:, 1] − out[:, 0]`` because ``softmax([a, b])[1] = sigmoid(b − a)``.
``extra_relu=True`` rebuilds the authors' retrained ("decoupled") decoder ``myDecoder``: every
transposed conv, the last included, is a full Convolution block (BatchNorm + PReLU) followed
by an extra ReLU, with two output channels and no sigmoid (they took the argmax).

At inference, completion encodes with μ (``VAE.forward(x, sample=False)``); sampling
z ~ q(z|x) is for training and for the optional uncertainty map.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from SkullVAELib.core.config import NetworkConfig
from SkullVAELib.core.errors import SkullVAEError


class ConvBlock(nn.Sequential):
    """Conv → BatchNorm3d → PReLU, laid out like MONAI's ``Convolution`` block.

    Children ``conv`` and ``adn`` (``adn.N`` BatchNorm3d, ``adn.A`` PReLU) carry MONAI's
    parameter names, so state dicts are interchangeable with MONAI's AutoEncoder blocks
    (tested in test_networks.py). Hand-built rather than imported: importing MONAI is a large
    share of the single-case completion latency budget (docs/BENCHMARKS.md).
    """

    def __init__(self, in_channels: int, out_channels: int, transposed: bool, conv_only: bool = False) -> None:
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        else:
            self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1)
        if not conv_only:
            self.adn = nn.Sequential()
            self.adn.add_module("N", nn.BatchNorm3d(out_channels))
            self.adn.add_module("A", nn.PReLU())


def conv_block(in_channels: int, out_channels: int, transposed: bool, conv_only: bool = False) -> ConvBlock:
    """One stride-2, kernel-3 block as MONAI's AutoEncoder builds it.

    ``transposed=False``: Conv3d p1 halves each side; ``True``: ConvTranspose3d p1 op1 doubles it.
    ``conv_only`` drops BatchNorm3d + PReLU (the last decoder layer).
    """
    return ConvBlock(in_channels, out_channels, transposed, conv_only)


def _check_volume(x: torch.Tensor, cfg: NetworkConfig) -> None:
    expected = (1, *cfg.grid)
    if x.ndim != 5 or tuple(x.shape[1:]) != expected:
        raise SkullVAEError(
            f"the encoder expects a batch of shape (B, {', '.join(map(str, expected))}) "
            f"(one channel on the model grid {'x'.join(map(str, cfg.grid))}), got {tuple(x.shape)}"
        )


class Encoder(nn.Module):
    """q(z|x): ``(B, 1, X, Y, Z) -> (mu (B, d), logvar (B, d))``.

    Attributes:
        blocks: ``nn.Sequential`` of N ``conv_block`` s (channels ``cfg.channels``).
        mu, logvar: ``nn.Linear(C·X/2^N·Y/2^N·Z/2^N, d)`` heads.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ins = (1, *cfg.channels[:-1])
        self.blocks = nn.Sequential(
            *[conv_block(i, o, transposed=False) for i, o in zip(ins, cfg.channels, strict=True)]
        )
        flat = _flat_size(cfg)
        self.mu = nn.Linear(flat, cfg.latent_size)
        self.logvar = nn.Linear(flat, cfg.latent_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ² in float32 whatever the autocast (see :func:`full_precision`)."""
        _check_volume(x, self.cfg)
        h = self.blocks(x).flatten(1)
        with full_precision(h):
            h = h.float()
            return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    """p(x|z): ``z (B, d) -> foreground probability (B, 1, X, Y, Z)`` in [0, 1].

    Args:
        cfg: the network configuration (grid, channels mirrored, latent size).
        out_channels: 1 (sigmoid head, ours) or 2 (the authors' softmax head).
        extra_relu: the authors' retrained decoder: every block (the last too) is
            conv → BatchNorm → PReLU → ReLU; requires ``out_channels=2``.
    """

    def __init__(self, cfg: NetworkConfig, out_channels: int = 1, extra_relu: bool = False) -> None:
        super().__init__()
        if out_channels not in (1, 2):
            raise SkullVAEError(f"decoder out_channels must be 1 or 2, got {out_channels}")
        if extra_relu and out_channels != 2:
            raise SkullVAEError("the extra-ReLU decoder (the authors' retrained decoder) needs out_channels=2")
        self.cfg = cfg
        self.out_channels = out_channels
        self.extra_relu = extra_relu
        self.linear = nn.Linear(cfg.latent_size, _flat_size(cfg))
        ins = cfg.channels[::-1]
        outs = (*cfg.channels[-2::-1], out_channels)
        last = len(ins) - 1
        self.blocks = nn.Sequential(
            *[
                conv_block(i, o, transposed=True, conv_only=(k == last and not extra_relu))
                for k, (i, o) in enumerate(zip(ins, outs, strict=True))
            ]
        )

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Raw output of the last layer, ``(B, out_channels, X, Y, Z)``."""
        if z.ndim != 2 or z.shape[1] != self.cfg.latent_size:
            raise SkullVAEError(
                f"the decoder expects latent codes of shape (B, {self.cfg.latent_size}), got {tuple(z.shape)}"
            )
        with full_precision(z):  # z and the first layer in float32 (issue 11: z = μ + σ sits just below 1)
            x = F.relu(self.linear(z.float()))
        x = x.view(z.shape[0], *self.cfg.bottleneck_shape)
        for block in self.blocks:
            x = block(x)
            if self.extra_relu:
                x = F.relu(x)
        return x

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Foreground logit ℓ ``(B, 1, X, Y, Z)``; probability = sigmoid(ℓ) for every head."""
        out = self.head(z)
        return out if self.out_channels == 1 else out[:, 1:2] - out[:, 0:1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))


def full_precision(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``t``'s device: the latent code z and the layers touching it stay float32.

    Under bf16 autocast a code near 1.0 is rounded in steps of 2⁻⁸-2⁻⁷; the authors' stage-2
    input z = μ + σ sits just below 1 and differs across skulls by less than one such step
    (docs/results/issue-11.md), so bf16 would erase it. The encoder's μ/log σ² heads and the decoder's first Linear are tiny;
    running them in float32 costs nothing measurable.
    """
    return torch.autocast(t.device.type, enabled=False)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + ε·exp(½ log σ²), ε ~ N(0, I); ``(B, d)``. ``generator`` makes ε reproducible."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


class VAE(nn.Module):
    """Encoder + reparameterisation + decoder (stage 1).

    ``forward(x, sample=True) -> (prob (B,1,X,Y,Z), mu (B,d), logvar (B,d), z (B,d))``;
    ``sample=False`` uses z = μ (inference and completion).
    """

    def __init__(self, cfg: NetworkConfig, out_channels: int = 1, extra_relu: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, out_channels=out_channels, extra_relu=extra_relu)

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, generator) if sample else mu
        return self.decoder(z), mu, logvar, z


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _flat_size(cfg: NetworkConfig) -> int:
    c, x, y, z = cfg.bottleneck_shape
    return c * x * y * z


@torch.no_grad()
def encode_dataset(
    encoder: Encoder, data: torch.Tensor, batch_size: int = 4, device: str | torch.device = "cpu", amp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ, log σ² ``(N, d)`` float32 of every volume with the encoder in eval mode (BN running stats).

    On CUDA with ``amp`` the conv blocks run in bf16; the μ/log σ² heads are float32 regardless.
    """
    device = torch.device(device)
    encoder.to(device).eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    )
    mus, logvars = [], []
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size].to(device, torch.float32)
        with autocast:
            mu, logvar = encoder(x)
        mus.append(mu.float())
        logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)
