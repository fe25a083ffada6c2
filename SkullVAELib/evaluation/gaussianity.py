"""How close is the aggregate posterior q(z) = (1/N) Σ_x q(z|x) to the prior N(0, I)?

The paper's claim is that a large β makes q(z) Gaussian. A posterior that ignores its
input (μ = 0, σ = 1 for every x: "posterior collapse") is *exactly* N(0, I) too, so
every Gaussianity number here is paired with the active units (Burda et al. 2016):
a latent with no active unit is reported as ``collapsed``, never as Gaussian.

Inputs: ``mu`` (N, d) and optionally ``logvar`` (N, d) = log σ² of q(z|x) per case.
"""

from __future__ import annotations

import numpy as np

ACTIVE_UNIT_THRESHOLD = 0.01  # Var_x(μ_i) above this: unit i is "active" (Burda et al.)
MAX_MMD_SAMPLES = 2000  # per side; the kernel matrix is (2n)², keep it small


def kl_to_standard_normal(mean: np.ndarray, cov: np.ndarray) -> float:
    """KL(N(mean, cov) ‖ N(0, I)) in nats = ½ (tr Σ + mᵀm − d − log det Σ); inf if Σ is singular."""
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0 or not np.isfinite(logdet):
        return float("inf")
    return float(0.5 * (np.trace(cov) + mean @ mean - mean.size - logdet))


def kl_per_dimension(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(d,) KL(N(m_i, v_i) ‖ N(0, 1)) = ½ (v + m² − 1 − log v); inf where v = 0."""
    mean = np.asarray(mean, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_var = np.where(var > 0, np.log(np.where(var > 0, var, 1.0)), -np.inf)
    return 0.5 * (var + mean**2 - 1.0 - log_var)


def _moments(mu: np.ndarray, extra_var: np.ndarray | None) -> dict:
    """Moment-matched Gaussian of a sample (plus the mean posterior variance, if given)."""
    mean = mu.mean(axis=0)
    cov = np.atleast_2d(np.cov(mu, rowvar=False, bias=True)) if mu.shape[0] > 1 else np.zeros((mu.shape[1],) * 2)
    if extra_var is not None:
        cov = cov + np.diag(extra_var)
    var = np.diag(cov).copy()
    per_dim = kl_per_dimension(mean, var)
    return {
        "kl_total": kl_to_standard_normal(mean, cov),
        "kl_per_dim": per_dim.tolist(),
        "kl_sum_of_dims": float(per_dim.sum()),
        "mean": mean.tolist(),
        "var": var.tolist(),
    }


def _rbf_kernel(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Gaussian kernel matrix exp(−‖a−b‖² / (2h²)) with h = median pairwise distance."""
    sq = np.sum(x**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    off = d2[np.triu_indices(len(x), k=1)]
    h2 = float(np.median(off)) if off.size else 1.0
    h2 = h2 if h2 > 0 else 1.0
    return np.exp(-d2 / (2.0 * h2)), float(np.sqrt(h2))


def _mmd2_unbiased(k: np.ndarray, idx_x: np.ndarray, idx_y: np.ndarray) -> float:
    """Unbiased MMD² estimate (U-statistic) from a pooled kernel matrix."""
    kxx = k[np.ix_(idx_x, idx_x)]
    kyy = k[np.ix_(idx_y, idx_y)]
    kxy = k[np.ix_(idx_x, idx_y)]
    m, n = len(idx_x), len(idx_y)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd_test(x: np.ndarray, y: np.ndarray, n_permutations: int = 500, seed: int = 0) -> dict:
    """Two-sample MMD² test (RBF kernel, median heuristic) with a permutation p-value.

    Returns ``{"mmd2", "p_value", "bandwidth", "n_permutations"}``;
    p = (1 + #{permuted MMD² ≥ observed}) / (1 + n_permutations).
    """
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([x, y]).astype(np.float64)
    k, bandwidth = _rbf_kernel(pooled)
    m = len(x)
    idx = np.arange(len(pooled))
    observed = _mmd2_unbiased(k, idx[:m], idx[m:])
    exceed = 0
    for _ in range(n_permutations):
        perm = rng.permutation(idx)
        if _mmd2_unbiased(k, perm[:m], perm[m:]) >= observed:
            exceed += 1
    return {
        "mmd2": observed,
        "p_value": (1 + exceed) / (1 + n_permutations),
        "bandwidth": bandwidth,
        "n_permutations": int(n_permutations),
    }


def latent_gaussianity(
    mu: np.ndarray,
    logvar: np.ndarray | None = None,
    n_permutations: int = 500,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Gaussianity of the aggregate posterior, paired with active units.

    Args:
        mu: (N, d) posterior means, one row per case.
        logvar: (N, d) posterior log-variances, or None (then only μ is analysed).
        n_permutations: permutations of the MMD test.
        seed: seeds the posterior samples, the N(0, I) samples and the permutations.
        alpha: significance level of the verdict.

    Returns a JSON-serialisable dict:
        ``n``, ``d``;
        ``mu_only``: moment-matched N(mean(μ), Cov(μ)) → ``kl_total``, ``kl_per_dim``,
            ``kl_sum_of_dims``, ``mean``, ``var`` (per dimension of μ);
        ``aggregate``: the same for the aggregate posterior (a mixture, so
            Var = Cov(μ) + diag E[σ²]); equal to ``mu_only`` without ``logvar``;
        ``mmd``: MMD² between z ~ q(z|x) (one seeded sample per case; z = μ without
            ``logvar``) and as many N(0, I) samples, with ``p_value``;
        ``active_units``, ``active_mask`` (list of bool), ``active_fraction``,
            ``mu_variance`` (Var_x(μ_i), list);
        ``collapsed``: True when no unit is active (the posterior ignores its input);
        ``gaussian``: True only when not collapsed and the MMD test does not reject;
        ``verdict``: "collapsed" | "consistent with N(0, I)" | "not N(0, I)".
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ValueError(f"mu must be (N, d) with N >= 2, got shape {mu.shape}")
    n, d = mu.shape
    rng = np.random.default_rng(seed)
    posterior_var = None
    if logvar is not None:
        logvar = np.asarray(logvar, dtype=np.float64)
        if logvar.shape != mu.shape:
            raise ValueError(f"logvar shape {logvar.shape} != mu shape {mu.shape}")
        sigma2 = np.exp(logvar)
        posterior_var = sigma2.mean(axis=0)
        z = mu + np.sqrt(sigma2) * rng.standard_normal(mu.shape)
    else:
        z = mu.copy()
    mu_only = _moments(mu, None)
    aggregate = _moments(mu, posterior_var) if posterior_var is not None else mu_only
    if n > MAX_MMD_SAMPLES:
        z = z[rng.choice(n, MAX_MMD_SAMPLES, replace=False)]
    prior = rng.standard_normal(z.shape)
    mmd = mmd_test(z, prior, n_permutations=n_permutations, seed=seed + 1)
    mu_variance = mu.var(axis=0)
    active = mu_variance > ACTIVE_UNIT_THRESHOLD
    collapsed = not bool(active.any())
    gaussian = (not collapsed) and mmd["p_value"] >= alpha
    if collapsed:
        verdict = "collapsed"
    else:
        verdict = "consistent with N(0, I)" if gaussian else "not N(0, I)"
    return {
        "n": int(n),
        "d": int(d),
        "has_logvar": logvar is not None,
        "mu_only": mu_only,
        "aggregate": aggregate,
        "mean_posterior_var": None if posterior_var is None else posterior_var.tolist(),
        "mmd": mmd,
        "active_units": int(active.sum()),
        "active_mask": active.tolist(),
        "active_fraction": float(active.mean()),
        "active_threshold": ACTIVE_UNIT_THRESHOLD,
        "mu_variance": mu_variance.tolist(),
        "collapsed": collapsed,
        "gaussian": gaussian,
        "alpha": alpha,
        "verdict": verdict,
    }
