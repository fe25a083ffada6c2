"""Centroids of μ, DEV arithmetic (paper eq. 12) and the defect classifier, on constructed latents."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from SkullVAELib.bundle.model_bundle import ModelBundle, new_bundle
from SkullVAELib.core.config import NetworkConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.vae.centroids import (
    DefectClassifier,
    class_centroids,
    classifier_of,
    deviation_vectors,
    fit_centroids,
    fit_completion,
    fit_defect_classifier,
    nearest_centroid_defect,
)

CFG = NetworkConfig(grid=(8, 8, 8), channels=(4, 8), latent_size=3)


class CodeEncoder(nn.Module):
    """Fake encoder: μ = the volume's first three voxels (so tests choose μ exactly)."""

    def forward(self, x):
        flat = x.flatten(1)
        return flat[:, :3].clone(), torch.zeros_like(flat[:, :3])


def _data(mu: np.ndarray, labels: list[str]):
    volumes = torch.zeros((len(labels), 1, *CFG.grid), dtype=torch.float16)
    volumes.view(len(labels), -1)[:, :3] = torch.from_numpy(mu).to(torch.float16)
    return SimpleNamespace(volumes=volumes, labels=labels, case_ids=[f"{i:03d}" for i in range(len(labels))])


def _bundle_with_code_encoder() -> ModelBundle:
    bundle = new_bundle(CFG, seed=0)
    bundle.encoder = CodeEncoder()
    return bundle


def test_centroids_and_dev_follow_eq_12():
    mu = np.array([[1, 1, 1], [3, 3, 3], [0, 0, 0], [0, 2, 0], [-4, 0, 0]], dtype=np.float32)
    labels = ["complete", "complete", "cranial", "cranial", "facial"]
    c = class_centroids(mu, labels)
    np.testing.assert_allclose(c["complete"], [2, 2, 2])
    np.testing.assert_allclose(c["cranial"], [0, 1, 0])
    dev = deviation_vectors(c)
    np.testing.assert_allclose(dev["cranial"], [2, 1, 2])  # c_complete − c_cranial
    np.testing.assert_allclose(dev["facial"], [6, 2, 2])
    assert deviation_vectors({"cranial": c["cranial"]}) == {}


def test_fit_centroids_encodes_every_case():
    mu = np.array([[1, 0, 0], [3, 0, 0], [0, 4, 0]], dtype=np.float32)
    c = fit_centroids(_bundle_with_code_encoder(), _data(mu, ["complete", "complete", "cranial"]), batch_size=2)
    assert set(c) == {"complete", "cranial"}  # no facial cases: no facial DEV
    np.testing.assert_allclose(c["complete"], [2, 0, 0])
    np.testing.assert_allclose(c["cranial"], [0, 4, 0])


def test_fit_centroids_rejects_data_on_another_grid():
    data = SimpleNamespace(volumes=torch.zeros((1, 1, 4, 4, 4)), labels=["complete"], case_ids=["0"])
    with pytest.raises(SkullVAEError, match="grid"):
        fit_centroids(_bundle_with_code_encoder(), data)


def _clusters(rng, n=20):
    cranial = rng.normal([4, 0, 0], 0.5, size=(n, 3))
    facial = rng.normal([0, 4, 0], 0.5, size=(n, 3))
    complete = rng.normal([0, 0, 4], 0.5, size=(n, 3))
    mu = np.concatenate([complete, cranial, facial]).astype(np.float32)
    return mu, ["complete"] * n + ["cranial"] * n + ["facial"] * n


def test_classifier_separates_defects_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    mu, labels = _clusters(np.random.default_rng(0))
    clf = fit_defect_classifier(mu, labels)
    assert clf.classes == ("cranial", "facial")
    name, conf = clf.predict(np.array([3.5, 0.2, 0.0]))
    assert name == "cranial" and conf > 0.9
    assert clf.predict(np.array([0.1, 3.8, 0.0]))[0] == "facial"
    # our stored-number prediction equals scikit-learn's
    keep = np.array([lab != "complete" for lab in labels])
    x = (mu[keep] - clf.mean) / clf.scale
    ref = LogisticRegression(C=1.0, max_iter=1000).fit(x, np.array(labels)[keep])
    np.testing.assert_allclose(clf.probabilities(mu[keep]), ref.predict_proba(x), atol=1e-8)
    again = DefectClassifier.from_dict(clf.to_dict())
    np.testing.assert_allclose(again.probabilities(mu), clf.probabilities(mu))


def test_single_defect_class_always_answers_it():
    clf = fit_defect_classifier(np.zeros((3, 2)), ["complete", "cranial", "cranial"])
    assert clf.predict(np.array([9.0, -9.0])) == ("cranial", 1.0)
    assert fit_defect_classifier(np.zeros((2, 2)), ["complete", "complete"]) is None


def test_nearest_centroid_fallback():
    cents = {"complete": np.zeros(2), "cranial": np.array([1.0, 0]), "facial": np.array([-1.0, 0])}
    name, conf = nearest_centroid_defect(np.array([0.9, 0.1]), cents)
    assert name == "cranial" and 0.5 < conf <= 1.0
    with pytest.raises(SkullVAEError):
        nearest_centroid_defect(np.zeros(2), {"complete": np.zeros(2)})


def test_fit_completion_stores_centroids_and_classifier_in_the_bundle(tmp_path):
    mu, labels = _clusters(np.random.default_rng(1), n=6)
    bundle = _bundle_with_code_encoder()
    centroids = fit_completion(bundle, _data(mu, labels))
    real_encoder = new_bundle(CFG, seed=0).encoder  # the code encoder is not a savable Encoder
    bundle.encoder = real_encoder
    bundle.save(tmp_path / "model")
    loaded = ModelBundle.load(tmp_path / "model")
    for label in ("complete", "cranial", "facial"):
        np.testing.assert_allclose(loaded.centroids[label], centroids[label], atol=1e-6)
    np.testing.assert_allclose(loaded.dev("facial"), centroids["complete"] - centroids["facial"], atol=1e-6)
    clf = classifier_of(loaded)
    assert clf is not None and clf.predict(np.array([4.0, 0, 0]))[0] == "cranial"
    assert loaded.completion_info["counts"] == {"complete": 6, "cranial": 6, "facial": 6}


def test_fit_completion_needs_complete_skulls():
    mu = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(SkullVAEError, match="complete"):
        fit_completion(_bundle_with_code_encoder(), _data(mu, ["cranial", "facial"]))


def test_centroids_live_in_the_completion_code_of_an_authors_stage2_bundle():
    """A decoupled decoder trained on the authors' fixed z = μ + σ reads μ + σ: centroids (and so
    DEV) are fitted in that code, not in μ (log σ² = 0 here, so σ = 1)."""
    mu = np.array([[1, 1, 1], [3, 3, 3], [0, 0, 0]], dtype=np.float32)
    data = _data(mu, ["complete", "complete", "cranial"])
    plain = _bundle_with_code_encoder()
    np.testing.assert_allclose(fit_centroids(plain, data)["complete"], [2, 2, 2])
    authors = new_bundle(CFG, aggregated=True, seed=0)
    authors.encoder = CodeEncoder()
    authors.info["stage2_latent"] = "mu_plus_sigma"
    np.testing.assert_allclose(fit_centroids(authors, data)["complete"], [3, 3, 3])
    np.testing.assert_allclose(authors.latent_code(np.zeros(3), np.zeros(3)), np.ones(3))
    authors.info["stage2_latent"] = "sample"  # the paper's z ~ q(z|x): the code is μ
    np.testing.assert_allclose(fit_centroids(authors, data)["complete"], [2, 2, 2])
