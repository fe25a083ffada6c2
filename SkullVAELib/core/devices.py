"""Device choice: the one rule for ``--device`` (training, fit-completion, completion, evaluation).

``"auto"`` is CUDA when present, else the CPU; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are
forced, and asking for a GPU this machine lacks is a one-line user error.
"""

from __future__ import annotations

import torch

from SkullVAELib.core.config import DEVICE_HELP
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
