"""One safetensors file per learned implant network: weights (float16) plus its settings as JSON.

Both learned sources (the facial refiner, :mod:`.learned`, and the cranial residual,
:mod:`.residual`) store a settings dataclass beside their weights; this module writes and reads
such a file, atomically and without unpickling anything, and refuses one of another kind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from SkullVAELib.core.errors import SkullVAEError


def save_weights(path: str | os.PathLike, network: torch.nn.Module, fmt: str, config_json: str, info: dict) -> None:
    """Write ``network``'s weights (float16), ``config_json`` and ``info`` to ``path``, atomically."""
    from safetensors.torch import save_file

    from SkullVAELib.core.atomic import atomic_path

    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in network.state_dict().items()}
    metadata = {"format": fmt, "config": config_json, "info": json.dumps(info or {})}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_weights(path: str | os.PathLike, fmt: str, what: str) -> tuple[dict, str, dict]:
    """(tensors, settings JSON, info) of a file written by :func:`save_weights` with format ``fmt``.

    ``what`` names the file in errors ("refiner"); every error is one line naming ``path``.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SkullVAEError(f"no such {what} file", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for a truncated or foreign file
        raise SkullVAEError(f"not a safetensors {what} file ({exc})", path) from None
    if metadata.get("format") != fmt:
        kind = fmt.removeprefix("skullvae-").replace("-", " ")  # "skullvae-facial-refiner": "facial refiner"
        raise SkullVAEError(f"not a {kind} (format {metadata.get('format')!r})", path)
    try:
        info = json.loads(metadata.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError("its training info is not a JSON object")
        return tensors, metadata["config"], info
    except (KeyError, ValueError, TypeError) as exc:
        raise SkullVAEError(f"the {what}'s stored settings are missing or damaged ({exc})", path) from None


def load_state(network: torch.nn.Module, tensors: dict, path: str | os.PathLike) -> torch.nn.Module:
    """``network`` with ``tensors`` loaded (as float32); one line naming ``path`` if they do not fit."""
    try:
        network.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        raise SkullVAEError(f"the weights do not fit the stored network ({str(exc).splitlines()[0]})", path) from None
    return network
