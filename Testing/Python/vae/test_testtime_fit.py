"""Test-time fit of z to the patient's own bone (SkullVAELib.vae.testtime_fit), on phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.grid import to_model_grid
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.vae.testtime_fit import FitConfig, dilate_mm, fit_latent, fit_to_patient, masked_soft_dice

GRID = (32, 32, 24)
VOXEL_MM = (6.4, 6.4, 6.4)


class BlendDecoder(nn.Module):
    """logits = 20·((1 − s)·A + s·B − 0.5), s = sigmoid(z₀): z₀ picks between two skulls A and B."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("a", torch.from_numpy(a)[None, None])
        self.register_buffer("b", torch.from_numpy(b)[None, None])
        self.gain = nn.Parameter(torch.tensor(20.0))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z[:, :1]).view(-1, 1, 1, 1, 1)
        return self.gain * ((1 - s) * self.a + s * self.b - 0.5)


@pytest.fixture(scope="module")
def case():
    skull_a = make_phantom(3, shape=(64, 64, 48), spacing=None)
    skull_b = make_phantom(8, shape=(64, 64, 48), spacing=None)
    defective, implant = cranial_defect(skull_a, seed=1)
    a, b = to_model_grid(skull_a, GRID), to_model_grid(skull_b, GRID)
    occupancy = to_model_grid(defective, GRID)
    hole = to_model_grid(implant, GRID) > 0.2
    return BlendDecoder(a, b), occupancy, hole, a


def test_fit_lowers_the_masked_loss_towards_the_patient(case):
    decoder, occupancy, hole, _ = case
    observed = ~dilate_mm(hole, VOXEL_MM, 10.0)
    start = np.array([3.0, 0.0], dtype=np.float32)  # s ≈ 0.95: the other skull
    result = fit_latent(decoder, occupancy, start, observed, FitConfig(steps=40, lr=0.2, prior_weight=0.0))
    assert result.losses[-1] < result.losses[0] - 0.05
    assert result.masked_dice[1] < result.masked_dice[0]
    assert result.z[0] < start[0] - 1.0  # moved towards the patient's skull A
    assert result.probabilities.shape == GRID and result.probabilities.dtype == np.float32


def test_step_count_is_respected_and_zero_steps_is_the_start(case):
    decoder, occupancy, hole, _ = case
    start = np.array([1.0, -0.5], dtype=np.float32)
    for steps in (0, 1, 7):
        result = fit_latent(decoder, occupancy, start, ~hole, FitConfig(steps=steps))
        assert len(result.losses) == steps + 1
    zero = fit_latent(decoder, occupancy, start, ~hole, FitConfig(steps=0))
    assert np.array_equal(zero.z, start) and zero.masked_dice[0] == zero.masked_dice[1]


def test_deterministic_with_a_seed(case):
    decoder, occupancy, hole, _ = case
    start = np.zeros(2, dtype=np.float32)
    runs = [fit_latent(decoder, occupancy, start, ~hole, FitConfig(steps=5, jitter=0.5, seed=s)).z for s in (1, 1, 2)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_patient_bone_and_decoder_are_never_altered(case):
    decoder, occupancy, hole, _ = case
    before = occupancy.copy()
    params = [p.detach().clone() for p in decoder.parameters()]
    fit_latent(decoder, occupancy, np.zeros(2, np.float32), ~hole, FitConfig(steps=5))
    assert np.array_equal(occupancy, before)
    assert all(torch.equal(p, q) for p, q in zip(decoder.parameters(), params, strict=True))
    assert all(p.requires_grad for p in decoder.parameters())  # restored
    assert decoder.training  # restored


def test_prior_pulls_z_towards_zero(case):
    decoder, occupancy, hole, _ = case
    start = np.array([0.0, 4.0], dtype=np.float32)  # z₁ does not change the decoding
    free = fit_latent(decoder, occupancy, start, ~hole, FitConfig(steps=20, lr=0.2, prior_weight=0.0))
    prior = fit_latent(decoder, occupancy, start, ~hole, FitConfig(steps=20, lr=0.2, prior_weight=0.1))
    assert free.z[1] == pytest.approx(4.0) and prior.z[1] < 3.0


def test_fit_to_patient_excludes_the_dilated_defect(case):
    decoder, occupancy, hole, a = case
    mu, shift = np.array([0.0, 0.0], np.float32), np.array([-2.0, 0.0], np.float32)
    result, region = fit_to_patient(
        decoder, occupancy, mu, shift, a, hole, VOXEL_MM, FitConfig(steps=3, mode="outside", dilation_mm=12.8)
    )
    assert region[hole].all() and region.sum() > hole.sum()  # dilated
    assert not result.observed[region].any() and result.observed[~region].all()
    # without `added`, the estimate is the decoded bone outside the patient's bone
    _, fallback = fit_to_patient(decoder, occupancy, mu, shift, a, None, VOXEL_MM, FitConfig(steps=0, mode="outside"))
    assert fallback[(a > 0.5) & (occupancy < 0.5)].all()


def test_masked_dice_and_bad_settings():
    p = torch.ones(1, 1, 2, 2, 2)
    w = torch.zeros_like(p)
    w[..., 0] = 1
    assert float(masked_soft_dice(p, p, w)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(SkullVAEError, match="steps"):
        FitConfig(steps=-1)
    with pytest.raises(SkullVAEError, match="start"):
        FitConfig(start="zero")
    with pytest.raises(SkullVAEError, match="observed"):
        fit_latent(nn.Identity(), np.zeros((2, 2, 2), np.float32), np.zeros(1), np.zeros((2, 2, 2), bool), FitConfig())


def test_refit_fits_from_mu_then_applies_the_shift(case):
    decoder, occupancy, hole, a = case
    mu, shift = np.array([3.0, 0.0], np.float32), np.array([0.5, 0.0], np.float32)
    result, added = fit_to_patient(
        decoder, occupancy, mu, shift, a, None, VOXEL_MM, FitConfig(steps=30, lr=0.2, prior_weight=0.0)
    )
    fitted = result.z - shift
    assert fitted[0] < mu[0] - 1.0  # moved from skull B towards the patient's skull A
    assert result.observed.all()  # refit matches every voxel of the defective skull
    with torch.no_grad():
        prob = torch.sigmoid(decoder.logits(torch.from_numpy(result.z)[None]))[0, 0].numpy()
        rec = torch.sigmoid(decoder.logits(torch.from_numpy(fitted)[None]))[0, 0].numpy()
    np.testing.assert_allclose(result.probabilities, prob, atol=1e-6)
    assert np.array_equal(added, (prob > 0.5) & ~(rec > 0.5))


def test_complete_with_the_fit_keeps_the_patient_bone_and_is_deterministic():
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import CompletionConfig, NetworkConfig
    from SkullVAELib.vae.completion import complete

    bundle = new_bundle(NetworkConfig(grid=(32, 32, 24), channels=(4, 8), latent_size=4), seed=0)
    bundle.set_centroids({"complete": np.zeros(4), "cranial": np.array([-1.0, 0, 0, 0]), "facial": np.ones(4)})
    defective, _ = cranial_defect(make_phantom(3, shape=(64, 64, 48), spacing=None), seed=1)
    before = defective.mask.copy()
    plain = complete(defective, bundle, CompletionConfig(defect="cranial"), device="cpu")
    runs = [complete(defective, bundle, CompletionConfig(defect="cranial", fit_steps=5), device="cpu") for _ in "ab"]
    assert "fit" in runs[0].timings and "fit" not in plain.timings
    assert np.array_equal(defective.mask, before)  # the input is never modified
    for res in runs:
        assert np.array_equal(res.completed.mask & defective.mask, defective.mask)  # patient bone kept
        assert not (res.implant.mask & defective.mask).any()
        assert np.array_equal(res.completed.mask, defective.mask | res.implant.mask)
    assert np.array_equal(runs[0].probabilities_model_grid, runs[1].probabilities_model_grid)
    assert not np.array_equal(runs[0].probabilities_model_grid, plain.probabilities_model_grid)
    with pytest.raises(SkullVAEError, match="fit_steps"):
        CompletionConfig(fit_steps=-2)


def test_cli_complete_fit_steps(tmp_path, capsys):
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.cli import main
    from SkullVAELib.core.config import PRESETS
    from SkullVAELib.io.image import read_skull, write_mask

    bundle = new_bundle(PRESETS["test"], seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(tmp_path / "model")
    defective, _ = cranial_defect(make_phantom(5, shape=(64, 64, 48), spacing=(3.2, 3.2, 3.2)), seed=2)
    write_mask(defective, tmp_path / "in.nrrd")
    argv = ["complete", "--model", tmp_path / "model", "--input", tmp_path / "in.nrrd", "--defect", "cranial"]
    argv += ["--sources", "model", "--device", "cpu", "--progress", "json", "--fit-steps", "3"]
    assert main([*map(str, argv), "--output", str(tmp_path / "r.seg.nrrd")]) == 0
    assert "fitting z to the patient's bone (3 steps)" in capsys.readouterr().out
    assert (tmp_path / "r.seg.nrrd").is_file()
    assert np.array_equal(read_skull(tmp_path / "in.nrrd").mask, defective.mask)  # input untouched
    with pytest.raises(SystemExit) as exited:  # argparse: one line, exit 2
        main([*map(str, argv[:-1]), "-1", "--output", str(tmp_path / "bad.seg.nrrd")])
    assert exited.value.code == 2
    assert "--fit-steps" in capsys.readouterr().err and not (tmp_path / "bad.seg.nrrd").exists()
