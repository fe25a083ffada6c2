"""The learned cranial residual (issue 24 §2): it starts at the rim fit, moves only the implant's
surface, never the patient's bone, lands on oblique grids, trains on the one loop, and its file is
checked like every model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.residual.config import ResidualConfig, load_residual, save_residual
from SkullVAELib.implant.residual.features import signed_distance
from SkullVAELib.implant.residual.infer import CranialResidual, corrected_implant
from SkullVAELib.implant.residual.pool import load_pools, make_sample, save_pool
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.io.image import SkullImage

SMALL = ResidualConfig(spacing_mm=6.0, crop_shape=(24, 24, 24), channels=(4, 8), sdf_clip_mm=10.0, max_shift_mm=4.0)


def _rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


@pytest.fixture(scope="module")
def case():
    """A vault defect on a phantom whose grid is tilted 20° (an oblique, gantry-tilted scan)."""
    phantom = make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2))
    tilted = SkullImage(phantom.mask, phantom.origin, phantom.spacing, _rotation(20.0))
    defective, truth = cranial_defect(tilted, 1, style="skullbreak")
    return defective, truth.mask, rim_fit(defective).implant


class ConstantShift(torch.nn.Module):
    """A stand-in network whose output is one number everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


def test_signed_distance_is_positive_exactly_on_the_implant(case):
    defective, _, rimfit = case
    sdf, box = signed_distance(defective, rimfit, 10.0)
    assert np.array_equal(sdf > 0, rimfit[box])
    assert sdf.max() <= 10.0 and sdf.min() >= -10.0


def test_an_untrained_residual_returns_the_rim_fit_bit_for_bit(case):
    defective, _, rimfit = case
    bone = defective.mask.copy()
    result = corrected_implant(defective, rimfit, SMALL.network().eval(), SMALL)
    assert np.array_equal(result.implant, rimfit)
    assert result.changed_mm3 == 0.0
    assert np.array_equal(defective.mask, bone)


@pytest.mark.parametrize("value, grows", [(50.0, True), (-50.0, False)])
def test_a_shift_moves_the_surface_and_never_the_patients_bone(case, value, grows):
    defective, _, rimfit = case
    bone = defective.mask.copy()
    result = corrected_implant(defective, rimfit, ConstantShift(value), SMALL)
    implant = result.implant
    assert np.array_equal(defective.mask, bone), "the patient's bone was modified"
    assert not (implant & defective.mask).any(), "the implant overlaps the patient's bone"
    assert implant.shape == rimfit.shape
    if grows:
        assert implant.sum() > 1.2 * rimfit.sum() and (rimfit & ~implant).sum() < 0.01 * rimfit.sum()
    else:
        assert implant.sum() < 0.8 * rimfit.sum() and not (implant & ~rimfit).any()


def test_a_sample_holds_the_crop_the_truth_and_what_the_loss_ignores(case, tmp_path):
    defective, truth, _ = case
    sample = make_sample(defective, truth, SMALL)
    assert sample["inputs"].shape == (3, 32, 32, 32) and sample["inputs"].dtype == np.float16
    inside = sample["inputs"][1].astype(np.float32) > 0
    target = sample["target"] > 127
    assert target.any() and 2 * (inside & target).sum() / (inside.sum() + target.sum()) > 0.6
    assert float(sample["inputs"][2].astype(np.float32).mean()) > 0  # the mirror cue
    excluded = make_sample(defective, truth, SMALL, exclude=truth)
    assert excluded is None, "a defect next to the excluded hole must be drawn again"
    save_pool(tmp_path / "p.npz", [("000", "skullbreak", sample)], SMALL)
    pool = load_pools([tmp_path / "p.npz"], SMALL)
    assert pool["inputs"].shape[0] == 1 and pool["ids"].tolist() == ["000"]
    with pytest.raises(SkullVAEError, match="made for 6 mm crops"):
        load_pools([tmp_path / "p.npz"], ResidualConfig())


def test_a_few_training_steps_write_weights_that_load(case, tmp_path):
    from SkullVAELib.implant.residual.train import ResidualTrainConfig
    from SkullVAELib.workflows.residual import train_residual

    defective, truth, _ = case
    sample = make_sample(defective, truth, SMALL)
    save_pool(tmp_path / "train.npz", [("000", "skullbreak", sample)], SMALL)
    save_pool(tmp_path / "val.npz", [("001", "skullbreak", sample)], SMALL)
    lines: list[str] = []
    path = train_residual([tmp_path / "train.npz"], tmp_path / "out", [tmp_path / "val.npz"], SMALL,
                          ResidualTrainConfig(steps=4, val_every=2, batch=1, lr_schedule="cosine"),
                          log=lines.append)  # fmt: skip
    network, cfg, info = load_residual(path)
    assert cfg == SMALL and info["steps"] == 4 and info["train_ids"] == ["000"]
    assert info["train"]["lr_schedule"] == "cosine"
    assert 0.0 <= info["best_val_dice"] <= 1.0 and "rim fit" in lines[-1]
    assert (tmp_path / "out" / "training_log.csv").is_file()
    assert (tmp_path / "out" / "residual_curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SkullVAEError, match="exists"):
        train_residual([tmp_path / "train.npz"], tmp_path / "out", (), SMALL, ResidualTrainConfig(steps=1))
    with pytest.raises(SkullVAEError, match="both the training and the validation"):
        train_residual([tmp_path / "train.npz"], tmp_path / "o2", [tmp_path / "train.npz"], SMALL)
    with pytest.raises(SkullVAEError, match="the residual's lr_schedule must be one of constant, cosine"):
        ResidualTrainConfig(lr_schedule="step")


def test_the_weights_file_is_checked(tmp_path):
    from safetensors.torch import save_file

    from SkullVAELib.implant.learned.config import RefinerConfig, save_refiner

    save_residual(tmp_path / "r.safetensors", SMALL.network(), SMALL, {"steps": 1})
    _, cfg, info = load_residual(tmp_path / "r.safetensors")
    assert cfg == SMALL and info == {"steps": 1}
    facial = RefinerConfig(crop_shape=(16, 16, 16), channels=(4, 8))
    save_refiner(tmp_path / "f.safetensors", facial.network(), facial)
    with pytest.raises(SkullVAEError, match="not a cranial residual"):
        load_residual(tmp_path / "f.safetensors")
    state = {k: v.clone() for k, v in SMALL.network().state_dict().items()}
    next(iter(v for v in state.values() if v.is_floating_point())).fill_(float("nan"))
    meta = {"format": "skullvae-cranial-residual", "config": SMALL.to_json(), "info": json.dumps({})}
    save_file(state, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(SkullVAEError, match="NaN"):
        load_residual(tmp_path / "nan.safetensors")


def test_the_completer_tries_the_residual_first_and_reports_it(case):
    from SkullVAELib.bundle.folder import ModelFolder
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings

    defective, _, _ = case
    settings = CompletionSettings(defect="cranial", quality=False)
    plain = Completer(settings).complete(defective)
    residual = CranialResidual(ConstantShift(50.0), SMALL)
    learned = Completer(settings, ModelFolder.from_parts(residual=residual)).complete(defective)
    assert plain.source == "rimfit" and "residual" in plain.skipped
    assert learned.source == "residual"
    assert learned.implant.mask.sum() > plain.implant.mask.sum()
    assert not (learned.implant.mask & defective.mask).any()
    assert any("learned residual changed" in w for w in learned.warnings)


def test_test_time_mirroring_averages_a_crop_with_its_mirror(case, ramp_network):
    import dataclasses

    defective, _, rimfit = case
    plain = corrected_implant(defective, rimfit, ramp_network, SMALL)
    assert plain.changed_mm3 > 0  # one side grows, the other shrinks
    mirrored = corrected_implant(defective, rimfit, ramp_network, dataclasses.replace(SMALL, test_time_mirror=True))
    assert np.array_equal(mirrored.implant, rimfit)  # an odd shift and its mirror cancel


def test_training_with_warped_crops_runs_and_resumes_only_with_them(case, tmp_path):
    from SkullVAELib.implant.residual.train import ResidualTrainConfig
    from SkullVAELib.workflows.residual import train_residual

    defective, truth, _ = case
    save_pool(tmp_path / "train.npz", [("000", "skullfix", make_sample(defective, truth, SMALL))], SMALL)
    warped = ResidualTrainConfig(steps=2, val_every=1, batch=1, augment=True)
    path = train_residual([tmp_path / "train.npz"], tmp_path / "out", (), SMALL, warped)
    _, _, info = load_residual(path)
    assert info["steps"] == 2 and info["train"]["augment"] is True
    plain = ResidualTrainConfig(steps=3, val_every=1, batch=1)
    with pytest.raises(SkullVAEError, match="augment=True"):
        train_residual([tmp_path / "train.npz"], tmp_path / "out", (), SMALL, plain, resume=True)


def test_a_pool_made_for_another_distance_scale_is_refused(tmp_path):
    """A pool's distance channel is divided by the ``sdf_clip_mm`` it was made with: a residual of
    another clip trained on it would read its inputs at inference on another scale, so it is refused."""
    import dataclasses

    from SkullVAELib.implant.residual.pool import PAD

    shape = tuple(n + 2 * PAD for n in SMALL.crop_shape)
    sample = {"inputs": np.zeros((3, *shape), np.float16), "target": np.zeros(shape, np.uint8)}
    save_pool(tmp_path / "p.npz", [("000", "skullbreak", {**sample, "ignore": np.zeros(shape, bool)})], SMALL)
    assert load_pools([tmp_path / "p.npz"], SMALL)["inputs"].shape == (1, 3, *shape)
    with pytest.raises(SkullVAEError, match="distances / 10 mm, not .* distances / 20 mm") as info:
        load_pools([tmp_path / "p.npz"], dataclasses.replace(SMALL, sdf_clip_mm=20.0))
    assert "\n" not in str(info.value) and "p.npz" in str(info.value)
