"""`complete`: γ = 0 reconstructs, patient bone is preserved, implants are clean, auto defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.core.config import CompletionConfig, NetworkConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.grid import from_model_grid, to_model_grid
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.vae.completion import complete
from SkullVAELib.vae.testtime_fit import FitConfig

CFG = NetworkConfig(grid=(64, 64, 48), channels=(4, 8), latent_size=4)


@pytest.fixture(scope="module")
def skulls():
    complete_skull = make_phantom(3, shape=(128, 128, 96), spacing=(1.6, 1.6, 1.6))
    defective, implant = cranial_defect(complete_skull, seed=1)
    return complete_skull, defective, implant


class OracleDecoder(nn.Module):
    """Decodes every z to a fixed occupancy (X, Y, Z): the complete skull on the model grid."""

    def __init__(self, occupancy: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("target", torch.from_numpy(occupancy)[None, None])

    def logits(self, z):
        return (self.target - 0.5).expand(z.shape[0], -1, -1, -1, -1) * 20.0

    def forward(self, z):
        return torch.sigmoid(self.logits(z))


class CodeEncoder(nn.Module):
    """μ = a fixed code, log σ² = ``logvar`` (0 by default)."""

    def __init__(self, code, logvar: float = 0.0) -> None:
        super().__init__()
        self.code = torch.tensor(code, dtype=torch.float32)
        self.logvar = float(logvar)

    def forward(self, x):
        return self.code.expand(x.shape[0], -1).clone(), torch.full((x.shape[0], self.code.numel()), self.logvar)


class RecordingDecoder(nn.Module):
    """Wraps a decoder and keeps every z (1, d) it is given; a deep copy (the fit's) keeps its own list."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def logits(self, z):
        self.seen.append(z.detach().clone())
        return self.inner.logits(z)

    def forward(self, z):
        return torch.sigmoid(self.logits(z))


def _centroids():
    return {"complete": np.zeros(4), "cranial": np.array([-1.0, 0, 0, 0]), "facial": np.array([0, -1.0, 0, 0])}


def _oracle_bundle(complete_skull, code=(-1.0, 0.0, 0.0, 0.0)):
    bundle = new_bundle(CFG, seed=0)
    bundle.decoder = OracleDecoder(to_model_grid(complete_skull, CFG.grid))
    bundle.encoder = CodeEncoder(code)
    bundle.set_centroids(_centroids())
    return bundle


def test_gamma_zero_reproduces_the_reconstruction(skulls):
    _, defective, _ = skulls
    bundle = new_bundle(CFG, seed=0)  # no centroids: γ = 0 still runs
    result = complete(defective, bundle, CompletionConfig(gamma=0.0, keep_patient_bone=False), device="cpu")
    with torch.inference_mode():
        x = torch.from_numpy(to_model_grid(defective, CFG.grid))[None, None]
        mu, _ = bundle.encoder(x)
        prob = bundle.decoder(mu)[0, 0].numpy()
    np.testing.assert_allclose(result.probabilities_model_grid, prob, atol=1e-6)
    expected = from_model_grid(prob, defective) > 0.5
    assert np.array_equal(result.raw.mask, expected)
    assert np.array_equal(result.completed.mask, expected)
    assert result.defect == "none"


def test_oracle_completion_recovers_the_implant_and_keeps_patient_bone(skulls):
    complete_skull, defective, true_implant = skulls
    result = complete(defective, _oracle_bundle(complete_skull), CompletionConfig(defect="cranial"), device="cpu")
    assert result.completed.same_geometry(defective) and result.implant.same_geometry(defective)
    assert not (result.implant.mask & defective.mask).any()  # implant ∩ input = ∅
    assert np.array_equal(result.completed.mask & defective.mask, defective.mask)  # every input bone voxel kept
    assert np.array_equal(result.completed.mask, defective.mask | result.implant.mask)
    inter = np.count_nonzero(result.implant.mask & true_implant.mask)
    dice = 2 * inter / (np.count_nonzero(result.implant.mask) + np.count_nonzero(true_implant.mask))
    assert dice > 0.8, dice
    assert result.implant_volume_mm3 > 1000
    assert set(result.timings) >= {"to_grid", "encode", "decode", "implant_model_grid", "implant_original"}


def test_islands_far_from_the_skull_are_removed(skulls):
    complete_skull, defective, _ = skulls
    bundle = _oracle_bundle(complete_skull)
    target = bundle.decoder.target.clone()
    target[0, 0, 30:36, 30:36, 20:26] = 1.0  # a blob inside the brain, far from bone
    target[0, 0, 2, 2, 2] = 1.0  # a one-voxel island in a corner
    bundle.decoder.target = target
    result = complete(defective, bundle, CompletionConfig(defect="cranial"), device="cpu")
    assert not result.implant.mask[60:72, 60:72, 40:52].any()
    assert not result.implant.mask[:8, :8, :8].any()


def test_auto_defect_uses_the_classifier_or_nearest_centroid(skulls):
    complete_skull, defective, _ = skulls
    bundle = _oracle_bundle(complete_skull, code=(0.1, -0.9, 0.0, 0.0))  # near the facial centroid
    result = complete(defective, bundle, CompletionConfig(defect="auto"), device="cpu")
    assert result.defect == "facial" and 0.5 < result.confidence <= 1.0
    bundle.completion_info = {
        "defect_classifier": {
            "kind": "logistic_regression",
            "classes": ["cranial", "facial"],
            "mean": [0, 0, 0, 0],
            "scale": [1, 1, 1, 1],
            "coef": [[-5.0, 0, 0, 0]],  # P(facial) = sigmoid(−5 μ₀)
            "intercept": [0.0],
        }
    }
    result = complete(defective, bundle, CompletionConfig(defect="auto"), device="cpu")
    assert result.defect == "cranial" and result.confidence == pytest.approx(1 / (1 + np.exp(-0.5)))


def test_latent_shift_is_gamma_times_dev(skulls, monkeypatch):
    complete_skull, defective, _ = skulls
    bundle = _oracle_bundle(complete_skull, code=(0.5, 0.0, 0.0, 0.0))
    seen = []
    logits = bundle.decoder.logits
    monkeypatch.setattr(bundle.decoder, "logits", lambda z: seen.append(z.clone()) or logits(z))
    complete(defective, bundle, CompletionConfig(gamma=1.5, defect="cranial"), device="cpu")
    np.testing.assert_allclose(seen[0][0].numpy(), [0.5 + 1.5 * 1.0, 0, 0, 0])  # DEV_cr = (1, 0, 0, 0)


def test_uncertainty_map_is_a_seeded_frequency(skulls):
    _, defective, _ = skulls
    bundle = new_bundle(CFG, seed=0)
    bundle.set_centroids(_centroids())
    cfg = CompletionConfig(gamma=1.0, defect="cranial", uncertainty_samples=3, seed=7)
    a = complete(defective, bundle, cfg, device="cpu").uncertainty
    b = complete(defective, bundle, cfg, device="cpu").uncertainty
    assert a.shape == defective.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)


def _recording_bundle(code, logvar):
    """A random-weight decoder (so the fit moves z) that records its inputs; μ and log σ² fixed."""
    bundle = new_bundle(CFG, seed=0)
    bundle.decoder = RecordingDecoder(bundle.decoder)
    bundle.encoder = CodeEncoder(code, logvar)
    bundle.set_centroids(_centroids())
    return bundle


def _seeded_eps(seed: int, k: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn((1, 4), generator=generator) for _ in range(k)]


@pytest.mark.parametrize("mode", ["refit", "outside"])
def test_uncertainty_samples_are_centred_on_the_fitted_latent(skulls, mode):
    """With the test-time fit on, the K samples are z_c + ε·σ around the latent z_c that the
    completion decodes (the fitted one, far from μ + γ·DEV), with the encoder's σ and seeded ε."""
    _, defective, _ = skulls
    code, sigma, k, seed = (0.5, -0.3, 0.2, 0.1), 0.5, 3, 7
    bundle = _recording_bundle(code, logvar=2 * np.log(sigma))
    cfg = CompletionConfig(gamma=1.0, defect="cranial", uncertainty_samples=k, seed=seed)
    fit = FitConfig(steps=15, lr=0.5, prior_weight=0.0, mode=mode, dilation_mm=3.0)
    result = complete(defective, bundle, cfg, device="cpu", fit=fit)
    samples, noise = bundle.decoder.seen[-k:], _seeded_eps(seed, k)  # the K samples are decoded last
    centre = samples[0] - sigma * noise[0]
    with torch.inference_mode():
        prob = torch.sigmoid(bundle.decoder.inner.logits(centre))[0, 0].numpy()
    np.testing.assert_allclose(result.probabilities_model_grid, prob, atol=1e-5)  # the centre is what is shown
    shifted = torch.tensor(code) + torch.tensor([1.0, 0, 0, 0])  # μ + γ·DEV, where samples were drawn before
    assert float((centre[0] - shifted).norm()) > 0.3
    for z, eps in zip(samples, noise, strict=True):
        torch.testing.assert_close(z, centre + sigma * eps, atol=1e-5, rtol=0)
    again = complete(defective, bundle, cfg, device="cpu", fit=fit).uncertainty
    np.testing.assert_array_equal(result.uncertainty, again)  # still seeded
    assert result.uncertainty.shape == defective.shape and result.uncertainty.dtype == np.float32


def test_uncertainty_samples_without_the_fit_stay_around_mu_plus_the_shift(skulls):
    """Fit off: the samples are μ + ε·σ + γ·DEV (as before), and the map equals the frequency of
    bone over exactly those decodings."""
    _, defective, _ = skulls
    code, sigma, k, seed = (0.5, -0.3, 0.2, 0.1), 0.5, 3, 7
    bundle = _recording_bundle(code, logvar=2 * np.log(sigma))
    cfg = CompletionConfig(gamma=1.0, defect="cranial", uncertainty_samples=k, seed=seed)
    result = complete(defective, bundle, cfg, device="cpu", fit=FitConfig(steps=0))
    samples = bundle.decoder.seen[-k:]
    mu, shift = torch.tensor([code]), torch.tensor([[1.0, 0, 0, 0]])
    for z, eps in zip(samples, _seeded_eps(seed, k), strict=True):
        torch.testing.assert_close(z, mu + sigma * eps + shift, atol=0, rtol=0)
    with torch.inference_mode():
        bone = [(torch.sigmoid(bundle.decoder.inner.logits(z))[0, 0] > 0.5).float() for z in samples]
    frequency = (sum(bone) / k).numpy()
    np.testing.assert_allclose(result.uncertainty, from_model_grid(frequency, defective, mode="area"), atol=1e-6)
    assert "fit" not in result.timings


def test_bad_requests(skulls):
    _, defective, _ = skulls
    bundle = new_bundle(CFG, seed=0)
    with pytest.raises(SkullVAEError, match="fit-completion"):
        complete(defective, bundle, CompletionConfig(gamma=1.0), device="cpu")
    with pytest.raises(SkullVAEError, match="empty"):
        complete(defective.with_mask(np.zeros(defective.shape, bool)), bundle, CompletionConfig(gamma=0.0))
    with pytest.raises(SkullVAEError, match="all-bone"):
        complete(defective.with_mask(np.ones(defective.shape, bool)), bundle, CompletionConfig(gamma=0.0))
    with pytest.raises(SkullVAEError, match="gamma"):
        complete(defective, bundle, CompletionConfig(gamma=float("nan")))
    bundle.set_centroids({"complete": np.zeros(4), "cranial": np.ones(4)})
    with pytest.raises(SkullVAEError, match="facial"):
        complete(defective, bundle, CompletionConfig(gamma=1.0, defect="facial"))


def test_bfloat16_networks_agree_with_float32(skulls):
    """The opt-in bf16 path changes probabilities by little and the implant by a few voxels."""
    _, defective, _ = skulls
    bundle = new_bundle(CFG, seed=0)
    bundle.set_centroids(_centroids())
    cfg = CompletionConfig(gamma=1.0, defect="cranial", keep_patient_bone=False)
    exact = complete(defective, bundle, cfg, device="cpu")
    fast = complete(defective, bundle, cfg, device="cpu", precision="bfloat16")
    assert np.abs(exact.probabilities_model_grid - fast.probabilities_model_grid).max() < 0.02
    differing = np.count_nonzero(exact.completed.mask != fast.completed.mask)
    assert differing <= 0.001 * exact.completed.mask.size
    with pytest.raises(SkullVAEError, match="precision"):
        complete(defective, bundle, cfg, device="cpu", precision="float16")


def test_an_authors_stage2_bundle_decodes_mu_plus_sigma(skulls):
    """A decoupled decoder trained on the fixed z = μ + σ is given μ + σ (+ γ·DEV), never bare μ."""
    complete_skull, defective, _ = skulls
    bundle = _oracle_bundle(complete_skull, code=(-1.0, 0.0, 0.0, 0.0))
    seen = []

    class Recorder(OracleDecoder):
        def logits(self, z):
            seen.append(z.detach().clone())
            return super().logits(z)

    bundle.decoupled_decoder = Recorder(to_model_grid(complete_skull, CFG.grid))
    bundle.info["stage2_latent"] = "mu_plus_sigma"
    complete(defective, bundle, CompletionConfig(gamma=0.0, defect="cranial"), device="cpu")
    torch.testing.assert_close(seen[0][0], torch.tensor([0.0, 1.0, 1.0, 1.0]))  # μ + exp(0/2)
