"""The refiner's settings (a dataclass, stored beside the weights) and its safetensors file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch

from SkullVAELib.core.config import TEST_TIME_SHIFTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.learned.unet import check_crop

REFINER_FORMAT = "skullvae-facial-refiner"


@dataclass
class RefinerConfig:
    """Grid, crop and network of the facial refiner (lengths in mm, shapes in voxels (X, Y, Z)).

    The crop starts at ``crop_offset_mm`` from the anchor (x: the bone's left-right centre,
    y: its most anterior point, z: its lowest point, all measured on the defective skull,
    which a facial defect leaves in place) and spans ``crop_shape`` voxels of ``spacing_mm``.
    """

    spacing_mm: float = 1.0
    crop_shape: tuple[int, int, int] = (144, 128, 128)
    crop_offset_mm: tuple[float, float, float] = (-72.0, -32.0, -8.0)
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    res_units: int = 1
    # a 1×1×1 convolution from channels[0] features to the logits; without it MONAI's top layer
    # ends in a one-channel instance norm + PReLU (the GPU recipe's network); the CPU recipe
    # needs it to train stably (docs/results/issue-09.md, the learned refiner)
    output_head: bool = False
    threshold: float = 0.4  # on the implant probability, on the patient's grid (0.5 before; RESULTS: 0.4 lowers HD95)
    # at inference, average the probability of the crop and of its left-right mirror (mirrored
    # back): the crop is centred on the bone's left-right centre, so the mirror is the other face side
    test_time_mirror: bool = False
    # at inference, the refiner's grid at n positions per axis, k/n of a voxel apart (k = 0 … n-1):
    # n³ passes whose probabilities are averaged on the patient's grid (1: one grid; the CPU
    # recipe's 2 mm voxels gain from 2, docs/results/issue-24-2026-12-05.md)
    test_time_shifts: int = 1
    # the network's input is the defective skull's anti-aliased bone fraction on the grid
    # (lps_grid.bone_fraction_onto), not its >= 50 % mask: thin facial bone a coarse grid's points
    # fall between stays visible (docs/results/issue-24-2026-12-06.md); the crop is still placed from the mask
    soft_input: bool = False
    # the network reads the crop's left-right mirror as a second channel (network.MirroredInput): the
    # intact side of an off-midline facial defect, handed to each voxel of the hole
    mirror_input: bool = False

    def __post_init__(self) -> None:
        self.crop_shape = tuple(int(v) for v in self.crop_shape)  # type: ignore[assignment]
        self.crop_offset_mm = tuple(float(v) for v in self.crop_offset_mm)  # type: ignore[assignment]
        self.channels = tuple(int(v) for v in self.channels)
        self.res_units = int(self.res_units)
        if len(self.channels) < 2 or len(self.crop_offset_mm) != 3:
            raise SkullVAEError(
                f"the refiner needs two or more levels of channels and 3 crop offsets (mm), got "
                f"{list(self.channels)} and {list(self.crop_offset_mm)}"
            )
        check_crop(self.crop_shape, self.channels, "the refiner's")
        if isinstance(self.test_time_shifts, bool) or self.test_time_shifts not in TEST_TIME_SHIFTS:
            raise SkullVAEError(
                f"the refiner's test_time_shifts must be one of {TEST_TIME_SHIFTS}, got {self.test_time_shifts!r}"
            )
        self.test_time_shifts = int(self.test_time_shifts)
        if not self.spacing_mm > 0 or not 0 < self.threshold < 1:
            raise SkullVAEError("the refiner needs spacing_mm > 0 and a threshold in (0, 1)")

    @property
    def in_channels(self) -> int:
        """Channels the network reads: the crop, and its left-right mirror with ``mirror_input``."""
        return 2 if self.mirror_input else 1

    def network(self) -> torch.nn.Module:
        """A new (untrained) refiner network of these settings (plain torch, no MONAI import)."""
        from SkullVAELib.implant.learned.network import refiner_network

        return refiner_network(self.channels, self.res_units, self.output_head, mirror_input=self.mirror_input)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RefinerConfig:
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError("the settings are not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def save_refiner(
    path: str | os.PathLike, network: torch.nn.Module, cfg: RefinerConfig, info: dict | None = None
) -> None:
    """Write the weights (float16) and ``cfg`` to a safetensors file, atomically."""
    from SkullVAELib.implant.weights import save_weights

    save_weights(path, network, REFINER_FORMAT, cfg.to_json(), info or {})


def load_refiner(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, RefinerConfig, dict]:
    """(network in eval mode, config, training info) from a file written by :func:`save_refiner`.

    Never unpickles: safetensors holds tensors and strings only.
    """
    from SkullVAELib.implant.weights import load_state, read_weights

    tensors, config_json, info = read_weights(path, REFINER_FORMAT, "refiner")
    try:
        cfg = RefinerConfig.from_json(config_json)
    except (ValueError, TypeError, SkullVAEError) as exc:
        raise SkullVAEError(f"the refiner's stored settings are missing or damaged ({exc})", path) from None
    check_refiner_file(cfg, tensors, path)  # sizes before the network is allocated; NaN weights refused
    return load_state(cfg.network(), tensors, path).to(device).eval(), cfg, info


def refiner_memory_bytes(cfg: RefinerConfig) -> float:
    """Estimated bytes of a refiner of ``cfg`` on one crop: float32 parameters of the U-Net (3x3x3
    convolutions down and up, ``res_units`` + 2 per level) plus its feature maps (6 per level) and its
    ``cfg.in_channels`` input channels and one output. ``cfg``: any settings of this U-Net family
    (the cranial residual's too) with ``crop_shape``, ``channels``, ``res_units`` and ``in_channels``."""
    voxels = float(math.prod(cfg.crop_shape))
    previous, parameters, features = cfg.in_channels, 0.0, (cfg.in_channels + 1) * voxels
    for level, c in enumerate(cfg.channels):
        parameters += 2 * 27 * (previous + c) * c * (cfg.res_units + 2)
        features += 6 * c * voxels / 8**level
        previous = c
    return 4.0 * (parameters + features)


def check_refiner_file(cfg: RefinerConfig, tensors: dict, path: str | os.PathLike) -> None:
    """Refuse (one line naming ``path``) settings too large for the limits (``core.limits``), before
    anything is allocated, and weights that are not finite (NaN or ±inf)."""
    from SkullVAELib.core.limits import check_memory, check_volume

    if not (1 <= len(cfg.channels) <= 8 and all(1 <= c <= 4096 for c in cfg.channels) and 0 <= cfg.res_units <= 8):
        raise SkullVAEError(
            f"implausible refiner network (channels {list(cfg.channels)}, res_units {cfg.res_units})", path
        )
    check_volume(cfg.crop_shape, 4, path, what="refiner crop")
    check_memory(refiner_memory_bytes(cfg), f"a refiner with channels {list(cfg.channels)} on a crop of "
                 f"{'x'.join(map(str, cfg.crop_shape))} voxels", path)  # fmt: skip
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SkullVAEError(f"the refiner's weights hold NaN or infinite values ({name})", path)
