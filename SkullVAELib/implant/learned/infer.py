"""The learned facial implant for one patient: crop, predict, resample back, post-process.

1. the defective skull on the refiner's 1 mm LPS grid (:mod:`.lps_grid`), bone where ≥ 50 % (and
   for a ``soft_input`` refiner its anti-aliased bone fraction, the network's input);
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

from SkullVAELib.core.limits import check_memory
from SkullVAELib.implant.check import MIN_IMPLANT_MM3
from SkullVAELib.implant.ensemble import MemberMean, join_members
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.crop import crop_start, cut, face_anchor, paste
from SkullVAELib.implant.learned.lps_grid import (
    LpsGrid,
    bone_fraction_onto,
    from_lps_grid,
    grid_corners,
    lps_grid_around,
    resample_onto,
)
from SkullVAELib.io.image import SkullImage

# the settings that place the crop (and its grid's shifts) and threshold its probability: an ensemble's members share them
ENSEMBLE_KEYS = ("spacing_mm", "crop_shape", "crop_offset_mm", "threshold", "test_time_shifts", "soft_input")


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
def crop_probability(
    bone: np.ndarray,
    origin: np.ndarray,
    network: torch.nn.Module,
    cfg: RefinerConfig,
    device: str,
    fraction: np.ndarray | None = None,
):
    """(probability float32 (X, Y, Z) on the LPS grid, zero outside the face crop; the crop's start).

    bone: bool (X, Y, Z) defective skull on the refiner's grid with voxel (0, 0, 0) at ``origin``;
    it places the crop and, unless ``fraction`` (float32 (X, Y, Z) in [0, 1], the input of a
    ``soft_input`` refiner) is given, is the network's input.
    """
    volume = torch.from_numpy(bone)
    o = torch.as_tensor(origin, dtype=torch.float32)
    start = crop_start(face_anchor(volume, o, cfg.spacing_mm), o, cfg)
    values = volume.float() if fraction is None else torch.from_numpy(fraction).float()
    x = cut(values[None, None], start, cfg.crop_shape).to(device)
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


def subvoxel_offsets(cfg: RefinerConfig) -> list[tuple[int, int, int]]:
    """The refiner grid's n³ positions for ``cfg.test_time_shifts`` n, in fine voxels of
    ``spacing_mm / n``: (kx, ky, kz), each k < n (the grid moved by k/n of a voxel along each axis)."""
    return list(itertools.product(range(cfg.test_time_shifts), repeat=3))


def _shifted_passes(skull: SkullImage, network: torch.nn.Module, cfg: RefinerConfig, device: str, timings: dict):
    """(float32 (n·X, n·Y, n·Z): the n³ passes' mean probability on the fine grid of ``spacing_mm /
    n``; that grid; (start, stop) fine indices of the block that holds every pass's crop plus one
    refiner voxel, None when no crop reaches the grid).

    Each refiner grid moved by k/n of a voxel is the fine grid's every n-th point from k, so the
    patient's bone is resampled once (the same points, the same linear interpolation as n³
    resamplings), and each pass's probability, linearly upsampled onto the fine points it spans,
    gives there exactly the values linear interpolation of its own grid gives anywhere.
    """
    n, t0 = cfg.test_time_shifts, time.perf_counter()
    timings["refiner_network"] = 0.0
    coarse = lps_grid_around(skull, cfg.spacing_mm)
    fine = LpsGrid(coarse.origin, cfg.spacing_mm / n, tuple(n * s for s in coarse.shape))
    per_voxel = 17.0 if cfg.soft_input else 13.0
    check_memory(float(np.prod(fine.shape)) * per_voxel, f"a {fine.shape} refiner grid", skull.metadata.get("source"))
    bone = resample_onto(skull, fine) >= 0.5
    # a soft-input refiner reads the bone fraction anti-aliased for its own (coarse) grid
    soft = bone_fraction_onto(skull, fine, cfg.spacing_mm) if cfg.soft_input else None
    total, lo, hi = np.zeros(fine.shape, np.float32), np.array(fine.shape), np.zeros(3, int)
    timings["refiner_grid"] = time.perf_counter() - t0
    for k in subvoxel_offsets(cfg):
        t0 = time.perf_counter()
        every_nth = (slice(k[0], None, n), slice(k[1], None, n), slice(k[2], None, n))
        part = np.ascontiguousarray(bone[every_nth])
        soft_part = None if soft is None else np.ascontiguousarray(soft[every_nth])
        origin = np.asarray(coarse.origin) + np.asarray(k) * fine.spacing
        on_grid, start = crop_probability(part, origin, network, cfg, device, soft_part)
        timings["refiner_network"] += time.perf_counter() - t0
        placed = _add_upsampled(total, on_grid, start, k, n, cfg.crop_shape)
        if placed is not None:
            lo, hi = np.minimum(lo, placed[0]), np.maximum(hi, placed[1])
    if np.any(hi <= lo):
        return total, fine, None
    return total / np.float32(n**3), fine, (lo, hi)


def _add_upsampled(total: np.ndarray, on_grid: np.ndarray, start, k, n: int, crop_shape) -> tuple | None:
    """Add to ``total`` (the fine grid) one pass's probability ``on_grid`` (its coarse grid, every
    n-th fine point from ``k``), linearly upsampled over its crop at ``start`` plus one coarse voxel
    (where it falls to 0); the fine (start, stop) it covered, None when the crop misses the grid."""
    coarse_shape = on_grid.shape
    window = [slice(max(a - 1, 0), min(a + c + 1, m)) for a, c, m in zip(start, crop_shape, coarse_shape, strict=True)]
    if any(w.stop <= w.start for w in window):
        return None
    size = [(w.stop - w.start - 1) * n + 1 for w in window]
    block = torch.from_numpy(np.ascontiguousarray(on_grid[tuple(window)]))[None, None]
    # align_corners=True on (w - 1)·n + 1 points: fine point j reads coarse position j / n exactly
    up = torch.nn.functional.interpolate(block, size=size, mode="trilinear", align_corners=True)[0, 0]
    first = np.array([w.start * n + o for w, o in zip(window, k, strict=True)])
    total[tuple(slice(f, f + m) for f, m in zip(first, size, strict=True))] += up.numpy()
    return first, first + np.array(size)


def _probability_on_patient(on_fine: np.ndarray, fine: LpsGrid, block, skull: SkullImage):
    """(float32: ``on_fine`` resampled (linear) onto the patient's grid on the box that holds
    ``block`` (fine (start, stop) indices; 0 outside it); that box as slices, None when the block
    misses the scan). Equal to resampling the whole grid, up to float rounding, without a
    whole-scan float array (docs/BENCHMARKS.md has the time saved)."""
    if block is None:
        return np.zeros((0, 0, 0), np.float32), None
    (lo, hi), margin = block, int(np.ceil(fine.spacing / float(skull.spacing.min()))) + 1
    box = skull.index_box(grid_corners(fine, lo, hi - lo), margin)
    if box is None:
        return np.zeros((0, 0, 0), np.float32), None
    part = LpsGrid(tuple(float(v) for v in np.asarray(fine.origin) + lo * fine.spacing), fine.spacing, tuple(hi - lo))
    values = on_fine[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return from_lps_grid(values, part, skull, box), box


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

    timings: dict[str, float] = {}
    on_fine, fine, block = _shifted_passes(skull, network, cfg, device, timings)
    t0 = time.perf_counter()
    probability, box = _probability_on_patient(on_fine, fine, block, skull)
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
