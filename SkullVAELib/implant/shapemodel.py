"""A statistical shape model of the vault: the shape cue where the patient's mirror gives none.

The shape bank (:mod:`shapebank`) holds every training skull's ray map and reproduces their vaults,
so it stays as private as the data. This model keeps only what the skulls share: the mean outer
radius (each skull scaled to median 1) over the rays where every skull has bone, the first
``n_modes`` principal modes of how they vary, and the mean bone thickness. No skull can be read back
from it. For a hole, the mean and the modes are fitted to the patient's rim rays by ridge regression
(the mean's weight, the size, is free; the modes are held near zero by ``ridge``), and the fitted
surface is the cue the rim's splines correct, as the mirror's would be (:mod:`rimcue`).

Installed as ``SkullVAELib/implant/shape_model.safetensors`` (``tools/make_shape_model.py``, from the
bank of SkullFix 000–055: docs/results/issue-24-2026-12-03.md, "A shape model as the default cue"), with its card in the
file (:attr:`ShapeModel.card`: what it was fitted to and the licence it inherits, SkullFix's CC BY-NC-SA
4.0). It is trained on SkullFix and, since the rim's thickness skips the rays a cut wall thinned, no
longer better on test (docs/results/issue-24-2026-12-05.md, "Where the rim fit's remaining error lies"), so it is not kept in
git; without it the rim fit has no shape cue unless a model folder holds a bank.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant import raycast
from SkullVAELib.implant.shapebank import ShapeBank, mean_where_seen

MODEL_FORMAT = "skullvae-shape-model"
INSTALLED_MODEL = Path(__file__).with_name("shape_model.safetensors")
MIN_RIM_RAYS = 20  # fewer rim rays inside the model's domain: no cue
MIN_HOLE_INSIDE = 0.95  # share of the hole's rays the model must cover


@dataclass(eq=False)
class ShapeModel:
    """Mean and principal modes of complete skulls' outer radius.

    Attributes:
        step_deg: the angular grid step (the rim fit's ``step_deg``).
        rays: bool (Nα, Nβ), the model's domain: rays on which every skull had bone.
        mean: float32 (R,) mean outer radius on ``rays`` (row-major order), each skull scaled to median 1.
        modes: float32 (M, R) principal modes (unit norm) of the scaled radii.
        thickness: float32 (Nα, Nβ) mean bone thickness (mm); NaN where no skull had bone.
        ridge: the modes' ridge penalty in the rim fit (mm² of squared residual per unit weight²).
        n_skulls: how many skulls it was fitted to.
        card: what it was fitted to and its licence ({"trained_on": ..., "licence": ...}; {} unknown).
    """

    step_deg: float
    rays: np.ndarray
    mean: np.ndarray
    modes: np.ndarray
    thickness: np.ndarray
    ridge: float
    n_skulls: int
    card: dict = field(default_factory=dict)


def fit_shape_model(bank: ShapeBank, n_modes: int = 10, ridge: float = 1e-3) -> ShapeModel:
    """The mean and the first ``n_modes`` principal modes of ``bank``'s outer radii (chosen on validation)."""
    radii = bank.r_out.reshape(len(bank), -1).astype(np.float64)
    rays = np.isfinite(radii).all(axis=0)
    scaled = radii[:, rays] / np.median(radii[:, rays], axis=1, keepdims=True)
    mean = scaled.mean(axis=0)
    modes = np.linalg.svd(scaled - mean, full_matrices=False)[2][:n_modes]
    thickness = mean_where_seen(list(bank.thickness))  # rays no skull reaches stay NaN
    shape = bank.r_out.shape[1:]
    return ShapeModel(
        bank.step_deg,
        rays.reshape(shape),
        mean.astype(np.float32),
        modes.astype(np.float32),
        thickness.astype(np.float32),
        float(ridge),
        len(bank),
    )


def model_cue(model: ShapeModel, raymap: raycast.RayMap, rim: np.ndarray, hole: np.ndarray) -> raycast.RayMap | None:
    """The model fitted to the patient's rim rays (bool (Nα, Nβ) ``rim``) as a ray map, or None when the
    hole (bool (Nα, Nβ)) lies outside the model's domain, the rim has too few rays in it, or the grids differ."""
    if abs(model.step_deg - raymap.step_deg) > 1e-9 or model.rays.shape != raymap.r_out.shape:
        return None
    on_rim = rim & model.rays & np.isfinite(raymap.r_out)
    if on_rim.sum() < MIN_RIM_RAYS or model.rays[hole].mean() < MIN_HOLE_INSIDE:
        return None
    position = np.cumsum(model.rays.ravel()) - 1  # index into mean/modes of each ray of the domain
    at = position[on_rim.ravel()]
    design = np.column_stack([model.mean[at], model.modes[:, at].T]).astype(np.float64)
    penalty = np.diag(np.r_[0.0, np.full(len(model.modes), model.ridge)])
    target = raymap.r_out[on_rim].astype(np.float64)
    weights = np.linalg.solve(design.T @ design + penalty, design.T @ target)
    outer = np.full(model.rays.shape, np.nan, dtype=np.float32)
    outer[model.rays] = weights[0] * model.mean + weights[1:] @ model.modes
    return raycast.RayMap(raymap.centre, raymap.step_deg, np.isfinite(outer), outer, outer - model.thickness)


def save_shape_model(model: ShapeModel, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` (safetensors, float32), atomically."""
    from safetensors.numpy import save_file

    from SkullVAELib.core.atomic import atomic_path

    tensors = {
        "rays": model.rays.astype(np.uint8),
        "mean": model.mean,
        "modes": np.ascontiguousarray(model.modes),
        "thickness": model.thickness,
    }
    info = {"step_deg": model.step_deg, "ridge": model.ridge, "n_skulls": model.n_skulls, "card": model.card}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "info": json.dumps(info)})


def load_shape_model(path: str | os.PathLike) -> ShapeModel:
    """The model written by :func:`save_shape_model`; one-line errors naming ``path`` otherwise."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(metadata.get("info", "{}"))
    except Exception as exc:  # safetensors' own error types for a missing, truncated or foreign file
        raise SkullVAEError(f"not a readable shape model ({exc})", path) from None
    if metadata.get("format") != MODEL_FORMAT:
        raise SkullVAEError(f"not a shape model (format {metadata.get('format')!r})", path)
    try:
        rays = tensors["rays"].astype(bool)
        model = ShapeModel(
            float(info["step_deg"]), rays, tensors["mean"], tensors["modes"], tensors["thickness"],
            float(info["ridge"]), int(info["n_skulls"]), dict(info.get("card", {})),
        )  # fmt: skip
    except (KeyError, ValueError, TypeError) as exc:
        raise SkullVAEError(f"the shape model's contents are missing or damaged ({exc})", path) from None
    if model.mean.shape != (int(rays.sum()),) or model.modes.shape[1:] != model.mean.shape:
        raise SkullVAEError("the shape model's mean and modes do not fit its rays", path)
    return model


@lru_cache(maxsize=1)
def installed_shape_model() -> ShapeModel | None:
    """The model installed beside this module (loaded once per process), or None when there is none."""
    return load_shape_model(INSTALLED_MODEL) if INSTALLED_MODEL.is_file() else None
