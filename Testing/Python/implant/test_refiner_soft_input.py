"""The facial refiner's soft input (issue 24 §4): the skull's anti-aliased bone fraction on the
refiner's grid, packed with the grids, drawn into training samples and read at inference, so that
bone thinner than the grid's spacing stays visible to the network."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.data.recipes import FACIAL
from SkullVAELib.implant.learned.config import RefinerConfig, load_refiner
from SkullVAELib.implant.learned.data import FRACTION_SCALE, load_lps_fractions, load_lps_grids, pack_lps_grids
from SkullVAELib.implant.learned.infer import learned_implant
from SkullVAELib.implant.learned.lps_grid import (
    LpsGrid,
    antialias_sigmas_mm,
    bone_fraction_onto,
    lps_grid_around,
    resample_onto,
)
from SkullVAELib.implant.learned.train import defect_sample, random_matrix, to_device
from SkullVAELib.io.image import SkullImage, write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
SOFT = RefinerConfig(
    spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8), soft_input=True
)
HARD_INPUT = replace(SOFT, soft_input=False)


def thin_plate(thickness_mm: float = 1.0, at_mm: float = 11.0) -> SkullImage:
    """A 0.5 mm scan (60 × 40 × 40, origin 0) holding a plate ``thickness_mm`` thick across x,
    starting at x = ``at_mm``, beside a 9 mm thick block (x 20-29 mm)."""
    mask = np.zeros((60, 40, 40), dtype=np.uint8)
    first = int(round(at_mm / 0.5))
    mask[first : first + int(round(thickness_mm / 0.5)), 4:36, 4:36] = 1
    mask[40:58, 4:36, 4:36] = 1
    return SkullImage(mask, np.zeros(3), np.full(3, 0.5), np.eye(3))


def oblique(image: SkullImage, degrees: float = 25.0) -> SkullImage:
    a = np.deg2rad(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return SkullImage(image.mask, image.origin + [10.0, -20.0, 5.0], image.spacing, rotation @ image.direction)


# --- lps_grid: the anti-aliased fraction ------------------------------------------------------
def test_the_sigmas_halve_what_the_grid_coarsens_each_axis_by():
    scan = SkullImage(np.zeros((4, 4, 4), np.uint8), np.zeros(3), np.array([0.5, 0.5, 3.0]), np.eye(3))
    assert antialias_sigmas_mm(scan, 2.0) == [0.75, 0.75, 0.0]  # an axis coarser than the grid: no blur


@pytest.mark.parametrize("at_mm", [11.0, 11.5, 12.0, 12.5])
def test_a_plate_thinner_than_the_grid_shows_in_the_fraction_wherever_it_lies(at_mm):
    """A 1 mm plate read at points 2 mm apart: the 50 % mask of the point samples loses it where it
    falls between the points; the anti-aliased fraction always holds it (≥ 0.15 at its nearest point)."""
    skull = thin_plate(1.0, at_mm)
    grid = LpsGrid((0.0, 0.0, 0.0), 2.0, (15, 10, 10))
    fraction = bone_fraction_onto(skull, grid)
    assert fraction.dtype == np.float32 and fraction.shape == (15, 10, 10)
    assert 0.0 <= fraction.min() and fraction.max() <= 1.0
    plate_rows = fraction[5:7, 5, 5]  # x = 10, 12 mm: the plate lies in 11-13.5 mm
    assert plate_rows.max() >= 0.15
    assert fraction[:4, 5, 5].max() < 0.01  # x ≤ 6 mm: no bone within 4 mm
    assert fraction[12, 5, 5] > 0.99  # x = 24 mm: inside the block
    if at_mm == 12.5:  # the plate (12.5-13.5 mm) between the points at 12 and 14 mm
        assert not (resample_onto(skull, grid)[5:8, 5, 5] >= 0.5).any()


def test_the_fraction_of_an_oblique_skull_keeps_its_bone_volume():
    """On an LPS grid around an oblique phantom, the fraction sums to the bone's volume (to 3 %)
    and agrees with the point-sampled mask where the bone is thick."""
    skull = oblique(make_phantom(3, SHAPE, SPACING))
    grid = lps_grid_around(skull, 4.0)
    fraction = bone_fraction_onto(skull, grid)
    bone_mm3 = float(skull.mask.sum()) * float(np.prod(skull.spacing))
    assert float(fraction.sum()) * 4.0**3 == pytest.approx(bone_mm3, rel=0.03)
    mask = resample_onto(skull, grid) >= 0.5
    assert (fraction >= 0.5).sum() == pytest.approx(mask.sum(), rel=0.1)


# --- packing and loading ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("soft_input")
    paths = {}
    for seed in (1, 2):
        paths[f"{seed:03d}"] = root / f"{seed:03d}.nrrd"
        write_mask(make_phantom(seed, SHAPE, SPACING), paths[f"{seed:03d}"])
    return paths


def test_fractions_are_packed_beside_the_masks_and_refused_where_they_were_not(phantom_paths, tmp_path):
    soft, hard = tmp_path / "soft.npz", tmp_path / "hard.npz"
    pack_lps_grids(phantom_paths, soft, 4.0, fractions=True)
    pack_lps_grids(phantom_paths, hard, 4.0)
    grids, _ = load_lps_grids(soft)
    fractions = load_lps_fractions(soft, ["001", "002"])
    for case_id, (bone, _origin) in grids.items():
        assert fractions[case_id].dtype == np.uint8 and fractions[case_id].shape == bone.shape
        assert 0 < int((fractions[case_id] > 0).sum()) and fractions[case_id].max() == FRACTION_SCALE
        assert (fractions[case_id][bone] > 0).mean() > 0.99  # the mask's bone holds bone in the fraction
    assert np.array_equal(load_lps_grids(hard)[0]["001"][0], grids["001"][0])  # the masks are the same
    with pytest.raises(SkullVAEError, match="--soft-input") as refused:
        load_lps_fractions(hard, ["001"])
    assert "hard.npz" in str(refused.value)


# --- training samples ---------------------------------------------------------------------------
def soft_skull(phantom_paths, folder, case_id: str):
    """Phantom ``case_id`` packed on 4 mm grids with its fraction, as a training ``Skull``."""
    packed = folder / "soft.npz"
    pack_lps_grids(phantom_paths, packed, 4.0, fractions=True)
    grids, spacing = load_lps_grids(packed)
    return to_device(grids, spacing, "cpu", load_lps_fractions(packed, list(grids)))[case_id]


def test_a_soft_sample_reads_the_fraction_off_the_defect_and_keeps_a_binary_target(phantom_paths, tmp_path):
    skull = soft_skull(phantom_paths, tmp_path, "001")
    for seed in range(3):
        x, y = defect_sample(skull, SOFT, torch.Generator().manual_seed(seed), FACIAL)
        hard_x, hard_y = defect_sample(skull, HARD_INPUT, torch.Generator().manual_seed(seed), FACIAL)
        assert torch.equal(y, hard_y)  # the same drawn defect and crop; the target is the mask's
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0} and y.any()
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert ((x > 0) & (x < 1)).any()  # fractions, not a mask
        assert float(x[hard_x > 0].mean()) > 0.7  # where the mask has bone, the fraction mostly does
        assert float(x[y > 0].max()) < 0.5  # the defect's region reads no bone (bar its border's blur)
    generator = torch.Generator().manual_seed(4)
    x, y = defect_sample(skull, SOFT, generator, FACIAL, random_matrix_for(generator))
    assert x.shape == y.shape == (1, 32, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    skull.fraction = None
    with pytest.raises(SkullVAEError, match="--soft-input"):
        defect_sample(skull, SOFT, torch.Generator().manual_seed(0), FACIAL)


def test_a_soft_target_is_the_implants_partial_volume_and_leaves_the_input_alone(phantom_paths, tmp_path):
    skull = soft_skull(phantom_paths, tmp_path, "002")
    for seed in range(3):
        x, y = defect_sample(skull, HARD_INPUT, torch.Generator().manual_seed(seed), FACIAL, soft_target=True)
        hard_x, hard_y = defect_sample(skull, HARD_INPUT, torch.Generator().manual_seed(seed), FACIAL)
        assert torch.equal(x, hard_x)  # the input stays the mask
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0 and ((y > 0) & (y < 1)).any()
        assert float(y[hard_y > 0].mean()) > 0.7 and float(y[x > 0].max()) < 0.5  # the implant, off the skull
        assert float(y.sum()) == pytest.approx(float(hard_y.sum()), rel=0.3)  # about the same volume
    soft_x, _ = defect_sample(skull, SOFT, torch.Generator().manual_seed(0), FACIAL, soft_target=True)
    assert ((soft_x > 0) & (soft_x < 1)).any()  # both soft at once


def random_matrix_for(generator: torch.Generator) -> torch.Tensor:
    from SkullVAELib.implant.learned.train import RefinerTrainConfig

    return random_matrix(RefinerTrainConfig(), SOFT.spacing_mm, generator)


# --- inference ----------------------------------------------------------------------------------
class InputRecorder(torch.nn.Module):
    """A stand-in network: logit 0 everywhere; remembers the inputs it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("shifts", [1, 2])
def test_a_soft_refiner_sees_fractions_and_its_implant_lands_on_the_oblique_grid(shifts):
    skull = oblique(make_phantom(5, SHAPE, SPACING))
    cfg = replace(SOFT, test_time_shifts=shifts)
    soft_net, hard_net = InputRecorder(), InputRecorder()
    result = learned_implant(skull, soft_net, cfg, "cpu")
    learned_implant(skull, hard_net, replace(cfg, soft_input=False), "cpu")
    assert len(soft_net.seen) == shifts**3
    assert result.implant.shape == skull.mask.shape and not (result.implant & skull.mask.astype(bool)).any()
    for soft, hard in zip(soft_net.seen, hard_net.seen, strict=True):
        assert set(torch.unique(hard).tolist()) <= {0.0, 1.0}
        assert ((soft > 0) & (soft < 1)).any() and float(soft.max()) <= 1.0
        assert float(soft[hard > 0].mean()) > 0.7  # the same crop, placed from the same mask


def test_the_soft_input_setting_round_trips_and_old_weights_read_as_the_mask(tmp_path):
    from SkullVAELib.implant.learned.config import save_refiner

    save_refiner(tmp_path / "r.safetensors", SOFT.network(), SOFT)
    assert load_refiner(tmp_path / "r.safetensors")[1].soft_input
    old = {k: v for k, v in json.loads(SOFT.to_json()).items() if k != "soft_input"}
    assert RefinerConfig.from_json(json.dumps(old)).soft_input is False


# --- the CLI ------------------------------------------------------------------------------------
def test_train_refiner_soft_input_packs_trains_and_refuses_a_pack_without_fractions(phantom_paths, tmp_path, capsys):
    data = tmp_path / "data" / "complete_skull"
    data.mkdir(parents=True)
    for path in phantom_paths.values():
        (data / path.name).write_bytes(path.read_bytes())
    common = ["--spacing", "4", "--crop", "32,32,32", "--channels", "4,8,16", "--progress", "none"]
    ids = ["--train-ids", "001", "--val-ids", "002"]
    hard = tmp_path / "hard.npz"
    assert (
        main(["train-refiner", "--data", str(tmp_path / "data"), "--out", str(hard), "--pack-only", *ids, *common]) == 0
    )
    train = ["train-refiner", "--grids", str(hard), "--out", str(tmp_path / "X"), *ids, *common, "--steps", "2"]
    assert main([*train, "--soft-input"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hard.npz" in err and "--soft-input" in err
    assert not (tmp_path / "X" / "refiner.safetensors").exists()
    out = tmp_path / "soft"
    argv = ["train-refiner", "--data", str(tmp_path / "data"), "--out", str(out), *ids, *common, "--steps", "2"]
    assert main([*argv, "--soft-input", "--soft-target", "--val-every", "1"]) == 0, capsys.readouterr().err
    _, cfg, info = load_refiner(out / "refiner.safetensors")
    assert cfg.soft_input and info["train"]["steps"] == 2 and info["train"]["soft_target"]
    assert load_lps_fractions(out / "grids.npz", ["001", "002"])["001"].any()
