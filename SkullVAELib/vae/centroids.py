"""Class centroids of μ, deviation vectors (DEV) and the defect-type classifier.

Paper eq. 12: with the class centroids ``c_label = mean μ`` over the training skulls of a
class, the deviation vectors are ``DEV_cranial = c_complete − c_cranial`` and
``DEV_facial = c_complete − c_facial``; a defective skull completes as
``decode(μ + γ·DEV)``.

The defect type of a new skull is classified from its μ by a multinomial logistic
regression fitted (scikit-learn) on the training μ of the defective classes. It is kept
as plain numbers (standardisation mean/scale, coef, intercept, class names) in JSON, never
pickled; prediction is re-implemented here from those numbers (softmax of the decision
function), so loading a bundle needs no scikit-learn object. It lives in completion.json's
"info" (``bundle.completion_info["defect_classifier"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from SkullVAELib.core.config import CLASSES, DEFECTS
from SkullVAELib.core.errors import SkullVAEError

LABELS = CLASSES  # vocabulary owned by config
CLASSIFIER_KEY = "defect_classifier"  # in completion.json "info"


# --- encoding -------------------------------------------------------------------------
@torch.inference_mode()
def encode_codes(bundle, volumes: torch.Tensor, batch_size: int = 4, device: str = "cpu") -> np.ndarray:
    """The completion code (``bundle.latent_code``: μ, or μ + σ) of every volume:
    ``volumes`` (N, 1, X, Y, Z) (any float dtype) -> float32 (N, d).

    The encoder is put in eval mode (BatchNorm running statistics) and left there.
    """
    encoder = bundle.encoder.eval().to(device)
    out = []
    for start in range(0, volumes.shape[0], batch_size):
        batch = volumes[start : start + batch_size].to(device=device, dtype=torch.float32)
        mu, logvar = encoder(batch)
        out.append(bundle.latent_code(mu.float(), logvar.float()).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def class_centroids(mu: np.ndarray, labels: list[str] | np.ndarray) -> dict[str, np.ndarray]:
    """Mean μ per label: ``mu`` (N, d), ``labels`` (N,) -> {label: float32 (d,)} (present labels only)."""
    labels = np.asarray(labels)
    if mu.shape[0] != labels.shape[0]:
        raise ValueError(f"{mu.shape[0]} latent vectors but {labels.shape[0]} labels")
    return {str(lab): mu[labels == lab].mean(axis=0).astype(np.float32) for lab in LABELS if np.any(labels == lab)}


def deviation_vectors(centroids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DEV_defect = c_complete − c_defect (paper eq. 12) for every defect class present.

    Returns an empty dict without a "complete" centroid.
    """
    if "complete" not in centroids:
        return {}
    complete = np.asarray(centroids["complete"], dtype=np.float32)
    return {d: complete - np.asarray(centroids[d], dtype=np.float32) for d in DEFECTS if d in centroids}


# --- defect classifier ----------------------------------------------------------------
@dataclass
class DefectClassifier:
    """Softmax classifier of the defect type from μ, stored as plain numbers.

    Attributes:
        classes: defect names, e.g. ("cranial", "facial"); one class = always that one.
        mean, scale: (d,) standardisation of μ.
        coef: (C, d) or (1, d) for two classes (scikit-learn's binary layout); intercept: (C,) or (1,).
    """

    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, mu: np.ndarray) -> np.ndarray:
        """``mu`` (N, d) or (d,) -> class probabilities (N, C) float64 (rows sum to 1)."""
        x = (np.atleast_2d(np.asarray(mu, dtype=np.float64)) - self.mean) / self.scale
        if len(self.classes) == 1:
            return np.ones((x.shape[0], 1))
        scores = x @ self.coef.T + self.intercept  # (N, C) or (N, 1)
        if scores.shape[1] == 1:  # binary: P(classes[1]) = sigmoid(score)
            scores = np.concatenate([np.zeros_like(scores), scores], axis=1)
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, mu: np.ndarray) -> tuple[str, float]:
        """The most likely defect of one μ (d,) and its probability."""
        p = self.probabilities(mu)[0]
        k = int(np.argmax(p))
        return self.classes[k], float(p[k])

    def to_dict(self) -> dict:
        return {
            "kind": "logistic_regression",
            "classes": list(self.classes),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> DefectClassifier:
        return cls(
            classes=tuple(d["classes"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
            coef=np.asarray(d["coef"], dtype=np.float64),
            intercept=np.asarray(d["intercept"], dtype=np.float64),
        )


def fit_defect_classifier(mu: np.ndarray, labels: list[str] | np.ndarray, c: float = 1.0) -> DefectClassifier | None:
    """Fit the defect classifier on the μ (N, d) of the defective training skulls.

    Only labels in DEFECTS are used. Returns None without defective skulls; with a single
    defect class the classifier always answers that class (probability 1).
    """
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    keep = np.isin(labels, DEFECTS)
    x, y = np.asarray(mu, dtype=np.float64)[keep], labels[keep]
    classes = tuple(d for d in DEFECTS if np.any(y == d))
    if not classes:
        return None
    d = x.shape[1]
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    if len(classes) == 1:
        return DefectClassifier(classes, mean, scale, np.zeros((1, d)), np.zeros(1))
    model = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
    if tuple(model.classes_) != classes:  # sklearn sorts labels; DEFECTS is sorted too
        raise RuntimeError(f"unexpected class order {model.classes_}")
    return DefectClassifier(classes, mean, scale, model.coef_.copy(), model.intercept_.copy())


def classifier_of(bundle) -> DefectClassifier | None:
    """The defect classifier stored in the bundle's completion info (completion.json), or None."""
    stored = (getattr(bundle, "completion_info", None) or {}).get(CLASSIFIER_KEY)
    if not stored:
        return None
    try:
        return DefectClassifier.from_dict(stored)
    except (KeyError, TypeError, ValueError) as exc:
        raise SkullVAEError(f"the model's defect classifier is corrupt ({type(exc).__name__}: {exc})") from None


def nearest_centroid_defect(mu: np.ndarray, centroids: Mapping[str, np.ndarray]) -> tuple[str, float]:
    """Fallback classifier: the defect centroid nearest to μ (d,), confidence = softmax(−distance²/2).

    Raises SkullVAEError without any defect centroid.
    """
    names = [d for d in DEFECTS if d in centroids]
    if not names:
        raise SkullVAEError("the model has no defect centroids; run `skullvae fit-completion` first")
    d2 = np.array([float(np.sum((np.asarray(mu) - centroids[n]) ** 2)) for n in names])
    p = np.exp(-(d2 - d2.min()) / 2.0)
    p /= p.sum()
    k = int(np.argmax(p))
    return names[k], float(p[k])


# --- the whole fit ---------------------------------------------------------------------
def _check_grid(bundle, data) -> None:
    if len(data.labels) == 0:
        raise SkullVAEError("no training cases to fit the centroids on")
    grid = tuple(data.volumes.shape[2:])
    if grid != tuple(bundle.network.grid):
        raise SkullVAEError(f"the cached data are on grid {grid}, the model expects {tuple(bundle.network.grid)}")


def fit_centroids(bundle, data, batch_size: int = 4, device: str = "cpu") -> dict[str, np.ndarray]:
    """Class centroids of μ over a CachedDataset (volumes (N, 1, X, Y, Z), labels (N,)).

    Returns {label: float32 (d,)} for the labels present among complete/cranial/facial; a
    missing defect class just has no DEV. Does not change the bundle.
    """
    _check_grid(bundle, data)
    mu = encode_codes(bundle, data.volumes, batch_size=batch_size, device=device)
    return class_centroids(mu, list(data.labels))


def fit_completion(bundle, data, batch_size: int = 4, device: str = "cpu") -> dict[str, np.ndarray]:
    """Fit centroids and the defect classifier (one encoding pass) and set them on ``bundle``.

    Stored via ``bundle.set_centroids(centroids, completion_info)``: the classifier's numbers,
    class counts and case ids go to completion.json's "info" once the bundle is saved.
    Returns the centroids. Raises SkullVAEError without complete skulls.
    """
    _check_grid(bundle, data)
    mu = encode_codes(bundle, data.volumes, batch_size=batch_size, device=device)
    labels = [str(x) for x in data.labels]
    centroids = class_centroids(mu, labels)
    if "complete" not in centroids:
        raise SkullVAEError("the training data hold no complete skulls; DEV = c_complete − c_defect needs them")
    classifier = fit_defect_classifier(mu, labels)
    info = {
        "counts": {lab: labels.count(lab) for lab in LABELS if lab in labels},
        "case_ids": sorted({str(c) for c in getattr(data, "case_ids", [])}),
        CLASSIFIER_KEY: None if classifier is None else classifier.to_dict(),
    }
    bundle.set_centroids(centroids, completion_info=info)
    return centroids
