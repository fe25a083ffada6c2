"""The cranial residual's settings (a dataclass stored beside its weights) and its safetensors file.

The residual corrects the rim fit's implant inside the hole: a U-Net on an LPS-aligned crop around
each implant piece reads the defective bone, the rim fit's signed distance and the mirror cue, and
outputs a surface shift in mm; the corrected implant is where ``sdf + shift > 0`` on the patient's
own grid (:mod:`.infer`). An untrained network (shift 0) gives the rim fit's implant bit for bit.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.learned.unet import check_crop

RESIDUAL_FORMAT = "skullvae-cranial-residual"
IN_CHANNELS = 3  # defective bone, rim-fit signed distance, mirrored bone


@dataclass
class ResidualConfig:
    """Grid, crop and network of the cranial residual (lengths in mm, shapes in voxels (X, Y, Z)).

    The crop is ``crop_shape`` voxels of ``spacing_mm``, centred on an implant piece's centroid, its
    axes the patient's LPS axes. ``sdf_clip_mm`` bounds the signed-distance input; ``max_shift_mm``
    the shift the network may apply (``max_shift_mm · tanh(output)``); ``sharpness_per_mm`` the
    slope of the training probability ``sigmoid(sharpness · (sdf + shift))``.
    """

    spacing_mm: float = 2.0
    crop_shape: tuple[int, int, int] = (64, 64, 64)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    res_units: int = 1
    sdf_clip_mm: float = 12.0
    max_shift_mm: float = 6.0
    sharpness_per_mm: float = 2.0
    # at inference, average the shift of the crop and of its left-right mirror (mirrored back)
    test_time_mirror: bool = False

    def __post_init__(self) -> None:
        self.crop_shape = tuple(int(v) for v in self.crop_shape)  # type: ignore[assignment]
        self.channels = tuple(int(v) for v in self.channels)
        self.res_units = int(self.res_units)
        if len(self.channels) < 2:
            raise SkullVAEError("the residual needs at least two levels of channels")
        check_crop(self.crop_shape, self.channels, "the residual's")
        if not (self.spacing_mm > 0 and self.max_shift_mm > 0 and self.sharpness_per_mm > 0):
            raise SkullVAEError("the residual needs spacing_mm, max_shift_mm and sharpness_per_mm > 0")
        if not self.sdf_clip_mm > self.max_shift_mm:
            raise SkullVAEError("the residual's sdf_clip_mm must exceed max_shift_mm (a shift must see its surface)")

    @property
    def extent_mm(self) -> tuple[float, ...]:
        """The crop's size in mm along x, y, z."""
        return tuple(n * self.spacing_mm for n in self.crop_shape)

    @property
    def in_channels(self) -> int:
        """Channels the network reads (``IN_CHANNELS``)."""
        return IN_CHANNELS

    def network(self) -> torch.nn.Module:
        """A new network of these settings whose output is 0 everywhere (plain torch, no MONAI import)."""
        from SkullVAELib.implant.learned.network import refiner_network

        return refiner_network(self.channels, self.res_units, True, self.in_channels, zero_head=True)

    def shift_mm(self, output: torch.Tensor) -> torch.Tensor:
        """The network's raw output as a bounded surface shift in mm (positive: the implant grows)."""
        return self.max_shift_mm * torch.tanh(output / self.max_shift_mm)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ResidualConfig:
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("the settings are not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def save_residual(path: str | os.PathLike, network: torch.nn.Module, cfg: ResidualConfig, info: dict | None = None):
    """Write the weights (float16) and ``cfg`` to a safetensors file, atomically."""
    from SkullVAELib.implant.weights import save_weights

    save_weights(path, network, RESIDUAL_FORMAT, cfg.to_json(), info or {})


def load_residual(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, ResidualConfig, dict]:
    """(network in eval mode, config, training info) from :func:`save_residual`'s file (never unpickled)."""
    from SkullVAELib.implant.learned.config import check_refiner_file
    from SkullVAELib.implant.weights import load_state, read_weights

    tensors, config_json, info = read_weights(path, RESIDUAL_FORMAT, "residual")
    try:
        cfg = ResidualConfig.from_json(config_json)
    except (ValueError, TypeError, SkullVAEError) as exc:
        raise SkullVAEError(f"the residual's stored settings are missing or damaged ({exc})", path) from None
    check_refiner_file(cfg, tensors, path)  # sizes before allocating (same U-Net family); NaN weights refused
    return load_state(cfg.network(), tensors, path).to(device).eval(), cfg, info
