"""Test-time shifts of the facial refiner: its grid moved by fractions of a voxel, n³ passes averaged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.infer import crop_probability, learned_implant, subvoxel_offsets
from SkullVAELib.implant.learned.lps_grid import LpsGrid, from_lps_grid, lps_grid_around, resample_onto
from SkullVAELib.io.image import SkullImage

CFG = RefinerConfig(spacing_mm=4.0, crop_shape=(64, 64, 64), channels=(4, 8, 16), crop_offset_mm=(-128, -32, -8))


class BoneEcho(torch.nn.Module):
    """A stand-in network that sees exactly what it is given: probability 1 on bone, 0 off it.
    Counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return 40.0 * (x - 0.5)


@pytest.fixture(scope="module")
def fine_skull() -> SkullImage:
    """A phantom on 1.6 mm voxels with a facial defect, tilted 20° (an oblique scan)."""
    defective, _ = facial_defect(make_phantom(8, (96, 96, 80), (1.6, 1.6, 1.6)), seed=0)
    a = np.deg2rad(20.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return SkullImage(defective.mask, defective.origin, defective.spacing, tilt)


def test_the_offsets_are_every_fine_position_along_every_axis():
    assert subvoxel_offsets(CFG) == [(0, 0, 0)]
    two = subvoxel_offsets(dataclasses.replace(CFG, test_time_shifts=2))
    assert len(two) == 8 and len(set(two)) == 8 and {v for o in two for v in o} == {0, 1}
    three = subvoxel_offsets(dataclasses.replace(CFG, test_time_shifts=3))
    assert len(three) == 27 and {v for o in three for v in o} == {0, 1, 2}


def test_the_fine_grid_gives_what_each_moved_grid_gives_on_its_own(fine_skull):
    """One resampling onto the fine grid and upsampled passes equal, up to float rounding, the n³
    passes done the plain way: the skull resampled onto each moved grid, the pass's probability
    resampled from there onto the patient's grid, then averaged."""
    cfg = dataclasses.replace(CFG, test_time_shifts=2)
    shifted = learned_implant(fine_skull, BoneEcho(), cfg).probability_on_grid()
    grid, plain = lps_grid_around(fine_skull, cfg.spacing_mm), np.zeros(fine_skull.shape, np.float32)
    for k in subvoxel_offsets(cfg):
        moved = LpsGrid(tuple(np.add(grid.origin, np.asarray(k) * cfg.spacing_mm / 2)), grid.spacing, grid.shape)
        bone = resample_onto(fine_skull, moved) >= 0.5
        on_grid, _ = crop_probability(bone, np.asarray(moved.origin), BoneEcho(), cfg, "cpu")
        plain += from_lps_grid(on_grid, moved, fine_skull) / 8
    assert plain.max() > 0.99 and np.allclose(shifted, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("value", [0, 4, True, 1.5, "2"])
def test_test_time_shifts_outside_one_to_three_are_refused(value):
    with pytest.raises(SkullVAEError, match="test_time_shifts"):
        RefinerConfig(test_time_shifts=value)


def test_shifted_passes_are_averaged_and_see_finer_than_one_coarse_grid(fine_skull):
    """On 4 mm voxels one grid rounds the 1.6 mm bone to its blocks; eight grids half a voxel
    apart, averaged on the patient's grid and thresholded, follow the bone more closely (each
    pass is the bone itself, as BoneEcho sees it). One network call per pass; the patient's
    skull untouched."""
    before = fine_skull.mask.copy()
    one, eight = BoneEcho(), BoneEcho()
    single = learned_implant(fine_skull, one, CFG)
    shifted = learned_implant(fine_skull, eight, dataclasses.replace(CFG, test_time_shifts=2))
    assert (one.calls, eight.calls) == (1, 8) and np.array_equal(fine_skull.mask, before)
    p1, p8 = single.probability_on_grid(), shifted.probability_on_grid()
    assert np.all((p8 >= 0) & (p8 <= 1))
    covered = (p1 > 0) & (p8 > 0)  # inside the crops of both
    truth = fine_skull.mask[covered]
    dice1, dice8 = dice(p1[covered] >= 0.5, truth), dice(p8[covered] >= 0.5, truth)
    assert dice8 > dice1 + 0.01, (dice1, dice8)  # a vote of eight coarse grids beats one
    assert set(shifted.timings) == {"refiner_grid", "refiner_network", "refiner_back"}
