"""Latent Gaussianity: KL to N(0, I), MMD test, active units, collapse flag."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from SkullVAELib.evaluation.gaussianity import kl_per_dimension, kl_to_standard_normal, latent_gaussianity, mmd_test


def test_kl_closed_forms():
    assert kl_to_standard_normal(np.zeros(3), np.eye(3)) == pytest.approx(0.0)
    # N(1, 1) in 1D: ½ (1 + 1 − 1 − 0) = 0.5
    assert kl_to_standard_normal(np.ones(1), np.eye(1)) == pytest.approx(0.5)
    # N(0, 4): ½ (4 − 1 − log 4)
    assert kl_per_dimension(np.zeros(1), np.full(1, 4.0))[0] == pytest.approx(0.5 * (3 - math.log(4)))
    assert kl_to_standard_normal(np.zeros(2), np.zeros((2, 2))) == math.inf
    assert kl_per_dimension(np.zeros(1), np.zeros(1))[0] == math.inf


def test_standard_normal_samples_look_gaussian():
    rng = np.random.default_rng(1)
    mu = rng.standard_normal((300, 4))
    out = latent_gaussianity(mu, None, n_permutations=200, seed=0)
    assert out["mu_only"]["kl_total"] < 0.1
    assert out["mmd"]["p_value"] > 0.05
    assert out["active_units"] == 4 and not out["collapsed"]
    assert out["gaussian"] and out["verdict"] == "consistent with N(0, I)"
    json.dumps(out)  # machine readable


def test_posterior_with_logvar_uses_the_mixture_variance():
    """μ ~ N(0, 0.5), σ² = 0.5 everywhere: the aggregate q(z) is N(0, 1) exactly,
    while μ alone has variance 0.5 (KL > 0)."""
    rng = np.random.default_rng(2)
    mu = rng.normal(0.0, math.sqrt(0.5), (400, 3))
    logvar = np.full_like(mu, math.log(0.5))
    out = latent_gaussianity(mu, logvar, n_permutations=200, seed=0)
    assert out["aggregate"]["kl_total"] < 0.05
    assert out["mu_only"]["kl_total"] > 0.2  # 3 × ½ (0.5 − 1 − log 0.5) ≈ 0.29
    assert np.allclose(out["aggregate"]["var"], np.array(out["mu_only"]["var"]) + 0.5)
    assert out["mmd"]["p_value"] > 0.05
    assert out["gaussian"]


@pytest.mark.parametrize("shift,scale", [(2.0, 1.0), (0.0, 3.0)])
def test_shifted_or_scaled_is_rejected(shift, scale):
    rng = np.random.default_rng(3)
    mu = shift + scale * rng.standard_normal((200, 4))
    out = latent_gaussianity(mu, None, n_permutations=200, seed=0)
    assert out["mu_only"]["kl_total"] > 2.0
    assert out["mmd"]["p_value"] < 0.01
    assert not out["gaussian"] and out["verdict"] == "not N(0, I)"


def test_collapsed_posterior_is_flagged_not_gaussian():
    """μ = 0 and σ = 1 for every case: q(z) is exactly N(0, I) (KL ≈ 0, MMD accepts),
    yet the encoder carries no information. It must be reported as collapsed."""
    mu = np.zeros((100, 6))
    logvar = np.zeros((100, 6))
    # z is drawn from N(0, I) exactly, so the p-value is uniform over seeds; seed 1 is typical.
    out = latent_gaussianity(mu, logvar, n_permutations=200, seed=1)
    assert out["aggregate"]["kl_total"] == pytest.approx(0.0, abs=1e-9)
    assert out["mu_only"]["kl_total"] == math.inf  # Cov(μ) = 0
    assert out["mmd"]["p_value"] > 0.05
    assert out["active_units"] == 0 and out["collapsed"]
    assert not out["gaussian"] and out["verdict"] == "collapsed"


def test_active_units_threshold():
    rng = np.random.default_rng(4)
    mu = np.zeros((50, 3))
    mu[:, 0] = rng.standard_normal(50)  # active
    mu[:, 1] = 0.05 * rng.standard_normal(50)  # Var ≈ 0.0025 < 0.01: inactive
    out = latent_gaussianity(mu, None, n_permutations=10)
    assert out["active_mask"] == [True, False, False] and out["active_units"] == 1


def test_mmd_is_seeded_and_validates_input():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 2)), rng.standard_normal((40, 2))
    assert mmd_test(x, y, 50, seed=7) == mmd_test(x, y, 50, seed=7)
    with pytest.raises(ValueError, match="N >= 2"):
        latent_gaussianity(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="logvar shape"):
        latent_gaussianity(np.zeros((4, 3)), np.zeros((4, 2)))
