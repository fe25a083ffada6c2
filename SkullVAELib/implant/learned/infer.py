"""The learned facial implant for one patient: crop, predict, resample back, post-process.

1. the defective skull on the refiner's 1 mm LPS grid (:mod:`.lps_grid`), bone where ≥ 50 %;
2. the face crop placed from its anchors (:mod:`.crop`), the U-Net's implant probability there;
3. that probability resampled (linear) onto the patient's exact grid (with ``test_time_shifts`` n,
   steps 1–3 run on the grid moved by k/n of a voxel along each axis, and the n³ probabilities are
   averaged there), thresholded, minus the patient's bone, then post-processed as the rim fit's
   implant (closing, keep what touches the bone, drop small islands).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from SkullVAELib.implant.check import MIN_IMPLANT_MM3
from SkullVAELib.implant.ensemble import MemberMean, join_members
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.crop import crop_start, cut, face_anchor, paste
from SkullVAELib.implant.learned.lps_grid import LpsGrid, from_lps_grid, grid_corners, lps_grid_around, resample_onto
from SkullVAELib.io.image import SkullImage

# the settings that place the crop and threshold its probability: an ensemble's members share them
ENSEMBLE_KEYS = ("spacing_mm", "crop_shape", "crop_offset_mm", "threshold")


@dataclass
class LearnedImplant:
    """implant: bool (I, J, K) on the patient's grid, disjoint from its bone; probability: float32
    of the network (before post-processing) on ``box``, the slices of the patient's grid that hold
    the crop (None when the crop misses the scan; the probability is 0 outside the box); seconds
    per step; messages for the user; expected_volume_mm3: the probability summed outside the
    patient's bone (the soft volume the thresholded, cleaned implant should roughly match)."""

    implant: np.ndarray
    probability: np.ndarray
    box: tuple[slice, ...] | None
    timings: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    expected_volume_mm3: float = float("nan")

    def probability_on_grid(self) -> np.ndarray:
        """float32 (I, J, K): the probability on the whole patient grid (0 outside the box)."""
        full = np.zeros_like(self.implant, dtype=np.float32)
        if self.box is not None:
            full[self.box] = self.probability
        return full


@dataclass
class FacialRefiner:
    """A trained refiner ready to use: network (eval mode), its config and the torch device."""

    network: torch.nn.Module
    cfg: RefinerConfig
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path, device: str = "cpu") -> FacialRefiner:
        """From a ``refiner.safetensors`` file, or several (an ensemble: their probabilities averaged
        before the threshold; they must share the grid settings ``ENSEMBLE_KEYS``); never unpickled."""
        from SkullVAELib.implant.learned.config import load_refiner

        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        loaded = [load_refiner(p, device) for p in paths]
        network, cfg, info = join_members(loaded, paths, ENSEMBLE_KEYS, "refiner", member_probability)
        return cls(network, cfg, device, info)

    def __call__(self, skull: SkullImage) -> LearnedImplant:
        return learned_implant(skull, self.network, self.cfg, self.device)


@torch.no_grad()
def crop_probability(bone: np.ndarray, origin: np.ndarray, network: torch.nn.Module, cfg: RefinerConfig, device: str):
    """(probability float32 (X, Y, Z) on the LPS grid, zero outside the face crop; the crop's start).

    bone: bool (X, Y, Z) defective skull on the refiner's grid with voxel (0, 0, 0) at ``origin``.
    """
    volume = torch.from_numpy(bone)
    o = torch.as_tensor(origin, dtype=torch.float32)
    start = crop_start(face_anchor(volume, o, cfg.spacing_mm), o, cfg)
    x = cut(volume.float()[None, None], start, cfg.crop_shape).to(device)
    probability = member_probability(network, x, cfg)[0, 0].cpu()
    return paste(probability, start, tuple(bone.shape)).numpy(), start


def member_probability(network: torch.nn.Module, x: torch.Tensor, cfg: RefinerConfig) -> torch.Tensor:
    """float32 (B, 1, X, Y, Z): the implant probability of ``network`` on crops ``x`` (B, 1, X, Y, Z);
    with ``cfg.test_time_mirror``, averaged with that of the left-right mirror. An ensemble
    (:class:`~SkullVAELib.implant.ensemble.MemberMean`) already outputs its members' mean probability."""
    if isinstance(network, MemberMean):
        return network(x).float()
    probability = torch.sigmoid(network(x).float())
    if cfg.test_time_mirror:  # x is the patient's left-right axis (LPS-aligned grid)
        probability = 0.5 * (probability + torch.sigmoid(network(x.flip(2)).float()).flip(2))
    return probability


def subvoxel_offsets(cfg: RefinerConfig) -> list[tuple[float, float, float]]:
    """The refiner grid's n³ moves (mm) for ``cfg.test_time_shifts`` n: k/n of a voxel per axis, k < n."""
    steps = [k * cfg.spacing_mm / cfg.test_time_shifts for k in range(cfg.test_time_shifts)]
    return list(itertools.product(steps, repeat=3))


def _mean_probability_on_patient(passes: list[tuple[np.ndarray, LpsGrid, list[int]]], cfg: RefinerConfig, skull):
    """(float32: the passes' mean probability on the patient's grid, on the box that holds every
    pass's crop (plus one refiner voxel, the reach of linear interpolation; 0 outside it); that box
    as slices, None when every crop misses the scan). ``passes``: (probability on a refiner grid,
    that grid, the crop's start). Equal to resampling the whole grids, up to float rounding,
    without a whole-scan float array (docs/BENCHMARKS.md has the time saved)."""
    margin = int(np.ceil(cfg.spacing_mm / float(skull.spacing.min()))) + 1
    boxes = [skull.index_box(grid_corners(grid, start, cfg.crop_shape), margin) for _, grid, start in passes]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return np.zeros((0, 0, 0), np.float32), None
    box = tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(3))
    total = np.zeros([s.stop - s.start for s in box], np.float32)
    for on_grid, grid, _ in passes:
        total += from_lps_grid(on_grid, grid, skull, box)
    return total / np.float32(len(passes)), box


def _implant_on_box(probability: np.ndarray, box, skull: SkullImage, threshold: float) -> tuple[np.ndarray, float]:
    """(bool (I, J, K) implant: ``probability`` (on ``box``) ≥ ``threshold`` off the patient's bone;
    the soft volume mm³, the probability summed off the bone)."""
    implant = np.zeros_like(skull.mask)  # the mask's memory order: mixed orders cost seconds
    if box is None:
        return implant, 0.0
    off_bone = ~skull.mask[box]
    implant[box] = (probability >= threshold) & off_bone
    return implant, float(np.sum(probability, where=off_bone, dtype=np.float64)) * skull.voxel_volume_mm3


def learned_implant(
    skull: SkullImage, network: torch.nn.Module, cfg: RefinerConfig, device: str = "cpu"
) -> LearnedImplant:
    """The refiner's facial implant for ``skull`` (any geometry; never modified)."""
    from SkullVAELib.implant.postprocess import postprocess_implant

    timings = {"refiner_grid": 0.0, "refiner_network": 0.0}
    grid, passes = lps_grid_around(skull, cfg.spacing_mm), []
    for offset in subvoxel_offsets(cfg):
        t0 = time.perf_counter()
        moved = grid.moved(offset)
        bone = resample_onto(skull, moved) >= 0.5
        timings["refiner_grid"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        on_grid, start = crop_probability(bone, np.asarray(moved.origin), network, cfg, device)
        passes.append((on_grid, moved, start))
        timings["refiner_network"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    probability, box = _mean_probability_on_patient(passes, cfg, skull)
    implant, expected = _implant_on_box(probability, box, skull, cfg.threshold)
    implant = postprocess_implant(implant, skull)
    timings["refiner_back"] = time.perf_counter() - t0
    volume = float(np.count_nonzero(implant)) * skull.voxel_volume_mm3
    messages = []
    if volume < MIN_IMPLANT_MM3:
        messages.append(
            f"the learned refiner predicts no facial implant ({volume:.0f} mm³): is the face missing, "
            "and is the input a whole skull (not a crop)?"
        )
    return LearnedImplant(implant, probability, box, timings, messages, expected)
