"""Device choice: the one rule for ``--device`` (training, fit-completion, completion, evaluation).

``"auto"`` is CUDA when present, else the CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are
forced, and asking for a GPU this machine lacks is a one-line user error. :func:`training_bf16`
is the one rule for a learned source's ``precision`` setting.
"""

from __future__ import annotations

import torch

from SkullVAELib.core.config import DEVICE_HELP, check_precision
from SkullVAELib.core.errors import SkullVAEError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA if present else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` forced (error if absent)."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SkullVAEError(f"unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SkullVAEError(f"device {name!r} requested but this torch has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SkullVAEError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type != "cpu":
        raise SkullVAEError(f"unsupported device {name!r}; use {DEVICE_HELP}")
    return device


def native_bf16(device: str | torch.device) -> bool:
    """True where bfloat16 arithmetic runs in hardware: a CUDA GPU, or a CPU with AVX512-BF16 or AMX
    (oneDNN then runs bf16 3D convolutions about twice as fast as fp32; elsewhere it emulates them)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's CPU-feature probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def training_bf16(precision: str, device: str | torch.device) -> bool:
    """Whether training runs its forward pass in bfloat16 autocast: ``"bf16"`` always, ``"fp32"`` never,
    ``"auto"`` where :func:`native_bf16` holds."""
    return check_precision(precision) == "bf16" or (precision == "auto" and native_bf16(device))
