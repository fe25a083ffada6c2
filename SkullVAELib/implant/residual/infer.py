"""The cranial residual for one patient: the rim fit's implant, corrected inside the hole.

1. the rim fit's signed distance on the implant's box (:func:`.features.signed_distance`);
2. per implant piece, the crop's three channels and the network's shift (mm) there;
3. the shift resampled onto the patient's exact grid; the implant is ``sdf + shift > 0`` minus the
   patient's bone, then the shared post-processing. Where the network outputs 0 the rim fit's
   implant is kept bit for bit (and with no change at all, it is returned untouched).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from SkullVAELib.implant.ensemble import MemberMean, join_members
from SkullVAELib.implant.residual.config import ResidualConfig
from SkullVAELib.implant.residual.features import (
    crop_grid,
    piece_centres,
    residual_inputs,
    shift_on_box,
    signed_distance,
)
from SkullVAELib.io.image import SkullImage

# the settings that place the crop and make its inputs: an ensemble's members share them
ENSEMBLE_KEYS = ("spacing_mm", "crop_shape", "sdf_clip_mm")


@dataclass
class ResidualImplant:
    """implant: bool (I, J, K), disjoint from the bone; changed_mm3: volume added plus removed
    relative to the rim fit; mean_shift_mm: the mean |shift| over the crops; timings in seconds."""

    implant: np.ndarray
    changed_mm3: float = 0.0
    mean_shift_mm: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class CranialResidual:
    """A trained residual ready to use: network (eval mode), its config and the torch device."""

    network: torch.nn.Module
    cfg: ResidualConfig
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path, device: str = "cpu") -> CranialResidual:
        """From a ``residual.safetensors`` file, or several (an ensemble: their shifts in mm averaged
        before ``sdf + shift > 0``; they must share the grid settings ``ENSEMBLE_KEYS``); never unpickled."""
        from SkullVAELib.implant.residual.config import load_residual

        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        loaded = [load_residual(p, device) for p in paths]
        network, cfg, info = join_members(loaded, paths, ENSEMBLE_KEYS, "residual", member_shift)
        return cls(network, cfg, device, info)

    def __call__(
        self, skull: SkullImage, rimfit: np.ndarray, mirror_transform: np.ndarray | None = None
    ) -> ResidualImplant:
        return corrected_implant(skull, rimfit, self.network, self.cfg, mirror_transform, self.device)


@torch.no_grad()
def predict_shift(network: torch.nn.Module, inputs: np.ndarray, cfg: ResidualConfig, device: str = "cpu") -> np.ndarray:
    """float32 (X, Y, Z): the shift in mm for one crop's inputs (3, X, Y, Z)."""
    x = torch.from_numpy(inputs)[None].to(device)
    return member_shift(network, x, cfg)[0, 0].cpu().numpy()


def member_shift(network: torch.nn.Module, x: torch.Tensor, cfg: ResidualConfig) -> torch.Tensor:
    """float32 (B, 1, X, Y, Z): the shift in mm of ``network`` on crops ``x`` (B, 3, X, Y, Z); with
    ``cfg.test_time_mirror``, averaged with that of the left-right mirror. An ensemble
    (:class:`~SkullVAELib.implant.ensemble.MemberMean`) already outputs its members' mean shift."""
    if isinstance(network, MemberMean):
        return network(x).float()
    shift = cfg.shift_mm(network(x).float())
    if cfg.test_time_mirror:  # the crop's x axis is the patient's left-right axis (LPS-aligned)
        shift = 0.5 * (shift + cfg.shift_mm(network(x.flip(2)).float()).flip(2))
    return shift


def corrected_implant(
    skull: SkullImage,
    rimfit: np.ndarray,
    network: torch.nn.Module,
    cfg: ResidualConfig,
    mirror_transform: np.ndarray | None = None,
    device: str = "cpu",
) -> ResidualImplant:
    """The residual's implant for ``skull`` given the rim fit's ``rimfit`` (bool (I, J, K)); neither is modified."""
    from SkullVAELib.implant.postprocess import postprocess_implant

    timings: dict[str, float] = {}
    centres = piece_centres(skull, rimfit)
    if not centres:
        return ResidualImplant(rimfit.copy(), timings=timings)
    t0 = time.perf_counter()
    sdf, box = signed_distance(skull, rimfit, cfg.sdf_clip_mm)
    shift = np.zeros_like(sdf)
    magnitudes = []
    timings["residual_distance"] = time.perf_counter() - t0
    for centre in centres:
        t0 = time.perf_counter()
        grid = crop_grid(centre, cfg)
        crop_shift = predict_shift(network, residual_inputs(skull, sdf, box, grid, cfg, mirror_transform), cfg, device)
        timings["residual_network"] = timings.get("residual_network", 0.0) + time.perf_counter() - t0
        magnitudes.append(float(np.abs(crop_shift).mean()))
        on_box = shift_on_box(crop_shift, grid, skull, box)
        shift = np.where(np.abs(on_box) > np.abs(shift), on_box, shift)  # overlapping crops: the larger shift
    t0 = time.perf_counter()
    inside = (sdf + shift > 0) & ~skull.mask[box]
    changed = int(np.count_nonzero(inside != rimfit[box]))
    implant = rimfit.copy()
    if changed:
        implant[box] = inside
        implant = postprocess_implant(implant, skull)
    timings["residual_back"] = time.perf_counter() - t0
    return ResidualImplant(implant, changed * skull.voxel_volume_mm3, float(np.mean(magnitudes)), timings)
