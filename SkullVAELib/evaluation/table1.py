"""The evaluation driver: runs a model over held-out cases and collects the paper's numbers.

Per test case (skulls read at full resolution):
- REC: encode μ, decode μ with the completion decoder, DSC against the input, on the
  model grid (decoded > 0.5 vs model-grid target > 0.5, as the paper) and at original
  resolution (probabilities mapped back, > 0.5, vs the original mask).
- CMP (defective cases): ``completion.complete(γ = 1, defect = true class)`` against the
  complete partner, on the model grid and at original resolution (the raw decoded skull;
  also the delivered skull = input ∪ implant, column ``cmp_dsc_kept``).
- implant (defective cases, original resolution): DSC, bDSC (10 mm), HD95 (mm, pooled)
  against the ground-truth implant (``implant_path``, else complete − defective).
- the defect type chosen by ``defect="auto"`` and its confidence.
Then the latent Gaussianity of the aggregate posterior on the test (and training) latents.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from SkullVAELib.core.config import COMPLETE, DEFECTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.evaluation.gaussianity import latent_gaussianity
from SkullVAELib.evaluation.metrics import dice, implant_metrics
from SkullVAELib.evaluation.views import orthogonal_views

LABELS = (*DEFECTS, COMPLETE)  # table order; the vocabulary is config's
METRIC_COLUMNS = (
    "rec_dsc_model",
    "rec_dsc_original",
    "cmp_dsc_model",
    "cmp_dsc_original",
    "cmp_dsc_kept",
    "implant_dsc",
    "implant_bdsc",
    "implant_hd95_mm",
)


@dataclass
class EvaluationResult:
    """Everything the report needs.

    Attributes:
        rows: one dict per test case: case_id, label, the METRIC_COLUMNS (NaN where not
            applicable), auto_defect, auto_confidence, seconds.
        table1: {"model_grid"|"original": {"rec"|"cmp": {label: mean DSC}}}.
        implant: {defect: {metric: {"mean", "median", "std", "n", "n_infinite"}}}.
        gaussianity: {"test": dict, "train": dict | None} (see gaussianity.latent_gaussianity).
        classification: {"accuracy", "n", "confusion": {true: {chosen: count}}}.
        latents: {"test"|"train": {"mu" (N, d), "logvar" (N, d), "labels", "case_ids"}}.
        examples: per (case_id, label) of a few defective cases: orthogonal views of the
            defective bone, predicted and true implant (see views.orthogonal_views).
        test_ids, train_ids: the case ids; grid_mode, grid, seconds: the setting and wall time.
    """

    rows: list[dict]
    table1: dict
    implant: dict
    gaussianity: dict
    classification: dict
    latents: dict
    examples: list[dict] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    train_ids: list[str] = field(default_factory=list)
    test_cases: list = field(default_factory=list)
    grid_mode: str = "area"
    grid: tuple[int, int, int] = (0, 0, 0)
    seconds: float = 0.0


# --- id specs ---------------------------------------------------------------------------
# --- model helpers ------------------------------------------------------------------------
@torch.inference_mode()
def encode(bundle, volume: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(μ (d,), log σ² (d,)) of one model-grid volume (X, Y, Z) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
    mu, logvar = bundle.encoder(x)
    return mu[0].float().cpu().numpy(), logvar[0].float().cpu().numpy()


@torch.inference_mode()
def decode(bundle, z: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Completion-decoder probabilities (X, Y, Z) float32 of one latent code (d,)."""
    zt = torch.from_numpy(np.asarray(z, dtype=np.float32))[None].to(device)
    return bundle.completion_decoder(zt)[0, 0].float().cpu().numpy()


def _encode_cases(bundle, cases, grid, mode, device, cache_dir, progress) -> dict:
    """μ, log σ² (N, d) of every case; with ``cache_dir``, through ``dataset.build_cache``
    (the trainer's cached model-grid volumes are reused), else read one by one."""
    from SkullVAELib.data.grid import to_model_grid
    from SkullVAELib.io.image import read_skull

    cases = list(cases)
    mus, logvars = [], []
    if cache_dir is not None:
        from SkullVAELib.data.dataset import build_cache

        data = build_cache(cases, grid, cache_dir=cache_dir, mode=mode, progress=progress)
        volumes = (data.volumes[n, 0].float().numpy() for n in range(data.volumes.shape[0]))
        labels, case_ids = list(data.labels), list(data.case_ids)
    else:
        volumes = (to_model_grid(read_skull(c.path, kind="binary"), grid, mode) for c in cases)
        labels, case_ids = [c.label for c in cases], [c.case_id for c in cases]
    for n, volume in enumerate(volumes):
        progress("encode training cases", n / max(len(labels), 1), f"{labels[n]} {case_ids[n]}")
        mu, logvar = encode(bundle, volume, device)
        mus.append(mu)
        logvars.append(logvar)
    return {"mu": np.stack(mus), "logvar": np.stack(logvars), "labels": labels, "case_ids": case_ids}


# --- aggregation -------------------------------------------------------------------------
def _summary(values: Sequence[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {
            "mean": math.nan,
            "median": math.nan,
            "std": math.nan,
            "n": int(arr.size),
            "n_infinite": int(arr.size - finite.size),
        }
    return {
        "mean": float(finite.mean()),
        "median": float(np.median(finite)),
        "std": float(finite.std()),
        "n": int(arr.size),
        "n_infinite": int(arr.size - finite.size),
    }


def summarise(rows: list[dict]) -> tuple[dict, dict, dict]:
    """(table1, implant, classification) from per-case rows."""

    def column(label: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["label"] == label]

    table1: dict = {}
    for where in ("model", "original"):
        rec = {lab: _summary(column(lab, f"rec_dsc_{where}"))["mean"] for lab in LABELS}
        cmp = {lab: _summary(column(lab, f"cmp_dsc_{where}"))["mean"] for lab in DEFECTS}
        table1["model_grid" if where == "model" else "original"] = {"rec": rec, "cmp": cmp}
    table1["original_kept"] = {"cmp": {lab: _summary(column(lab, "cmp_dsc_kept"))["mean"] for lab in DEFECTS}}
    implant = {lab: {m: _summary(column(lab, f"implant_{m}")) for m in ("dsc", "bdsc", "hd95_mm")} for lab in DEFECTS}
    chosen = [(r["label"], r["auto_defect"]) for r in rows if r["label"] in DEFECTS and r.get("auto_defect")]
    confusion: dict = {t: {c: 0 for c in DEFECTS} for t in DEFECTS}
    for true, pick in chosen:
        confusion[true][pick] = confusion[true].get(pick, 0) + 1
    accuracy = (sum(t == c for t, c in chosen) / len(chosen)) if chosen else math.nan
    classification = {"accuracy": accuracy, "n": len(chosen), "confusion": confusion}
    return table1, implant, classification


# --- the driver ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """What every case of one evaluation shares: the model, its grid and resampling mode, the device."""

    bundle: Any
    grid: tuple[int, int, int]
    grid_mode: str
    device: str


def _partners(test_cases) -> dict[str, object]:
    return {c.case_id: c for c in test_cases if c.label == "complete"}


def _ground_truth_implant(case, defective, complete_mask):
    from SkullVAELib.io.image import check_same_grid, read_skull

    path = getattr(case, "implant_path", None)
    if path:
        implant = read_skull(path, kind="binary")
        check_same_grid(implant, defective, path, "its defective skull")
        return implant.mask
    if complete_mask is None:
        return None
    return complete_mask & ~defective.mask


def _complete_partner(case, skull, partners: dict, complete_cache: dict) -> np.ndarray | None:
    """The complete skull mask (I, J, K) of a defective case's id, or None.

    The complete skull is read once into ``complete_cache`` (case id → SkullImage). One on another voxel
    grid than ``skull``'s (shape, spacing, origin or direction) is refused: SkullVAEError naming its file.
    """
    from SkullVAELib.io.image import check_same_grid, read_skull

    if case.case_id not in partners:
        return None
    path = partners[case.case_id].path
    partner = complete_cache.get(case.case_id)
    if partner is None:
        partner = read_skull(path, kind="binary")
        complete_cache[case.case_id] = partner
    check_same_grid(partner, skull, path, f"its {case.label} skull")
    return partner.mask


def _reconstruct(run: _Run, skull) -> tuple[dict, np.ndarray, np.ndarray]:
    """REC of one skull: ({"rec_dsc_model", "rec_dsc_original"}, μ (d,), log σ² (d,))."""
    from SkullVAELib.data.grid import from_model_grid, to_model_grid

    target = to_model_grid(skull, run.grid, run.grid_mode)
    mu, logvar = encode(run.bundle, target, run.device)
    prob = decode(run.bundle, run.bundle.latent_code(mu, logvar), run.device)
    rec = {
        "rec_dsc_model": dice(prob > 0.5, target > 0.5),
        "rec_dsc_original": dice(from_model_grid(prob, skull, run.grid_mode) > 0.5, skull.mask),
    }
    return rec, mu, logvar


def _complete_as_labelled(run: _Run, skull, label: str):
    """(completion with γ = 1 and the true defect ``label``, the defect ``defect="auto"`` chose, its confidence).

    The auto run gives the classification; when it chose ``label``, it is the completion too.
    """
    from SkullVAELib.core.config import CompletionConfig
    from SkullVAELib.vae.completion import complete

    result = complete(skull, run.bundle, CompletionConfig(gamma=1.0, defect="auto", resample=run.grid_mode), run.device)
    chosen, confidence = result.defect, float(result.confidence)
    if chosen != label:
        result = complete(
            skull, run.bundle, CompletionConfig(gamma=1.0, defect=label, resample=run.grid_mode), run.device
        )
    return result, chosen, confidence


def _evaluate_defective(run: _Run, case, skull, partner, keep_example: bool) -> tuple[dict, dict | None]:
    """CMP, implant metrics and the auto defect of one defective case: (row columns, figure example or None).

    ``partner``: the complete skull mask of the case id, or None (then skull ∪ the true implant when known).
    """
    gt_implant = _ground_truth_implant(case, skull, partner)
    if partner is None and gt_implant is not None:
        partner = skull.mask | gt_implant
    result, chosen, confidence = _complete_as_labelled(run, skull, case.label)
    columns: dict = {"auto_defect": chosen, "auto_confidence": confidence}
    if partner is not None:
        from SkullVAELib.data.grid import to_model_grid

        partner_grid = to_model_grid(skull.with_mask(partner), run.grid, run.grid_mode)
        columns["cmp_dsc_model"] = dice(np.asarray(result.probabilities_model_grid) > 0.5, partner_grid > 0.5)
        columns["cmp_dsc_original"] = dice(_mask(result.raw), partner)
        columns["cmp_dsc_kept"] = dice(_mask(result.completed), partner)
    if gt_implant is None:
        return columns, None
    pred = _mask(result.implant)
    m = implant_metrics(pred, gt_implant, skull.mask, skull.spacing, 10.0)
    columns.update(implant_dsc=m["dsc"], implant_bdsc=m["bdsc"], implant_hd95_mm=m["hd95"])
    if not keep_example:
        return columns, None
    views = orthogonal_views(skull.mask, pred, gt_implant, skull.spacing)
    return columns, {"case_id": case.case_id, "label": case.label, "views": views}


def _evaluate_cases(run: _Run, test_cases: list, n_examples: int, progress: ProgressCallback):
    """Every test case in order: (rows, figure examples, test μ (N, d), test log σ² (N, d)).

    ``test_cases`` sorted with the complete skull first within an id: its mask is the CMP
    ground truth of the defective ones (at most one id's complete skull is kept in memory).
    """
    from SkullVAELib.io.image import read_skull

    partners = _partners(test_cases)
    rows, examples, mus, logvars = [], [], [], []
    complete_cache: dict = {}  # case id -> its complete skull (SkullImage)
    for n, case in enumerate(test_cases):
        progress("evaluate", n / len(test_cases), f"{case.label} {case.case_id}")
        t0 = time.perf_counter()
        skull = read_skull(case.path, kind="binary")
        rec, mu, logvar = _reconstruct(run, skull)
        mus.append(mu)
        logvars.append(logvar)
        row = {"case_id": case.case_id, "label": case.label, **{k: math.nan for k in METRIC_COLUMNS}, **rec}
        row.update(auto_defect="", auto_confidence=math.nan)
        if case.label == "complete":
            complete_cache[case.case_id] = skull
        else:
            partner = _complete_partner(case, skull, partners, complete_cache)
            keep_example = sum(e["label"] == case.label for e in examples) < n_examples
            columns, example = _evaluate_defective(run, case, skull, partner, keep_example)
            row.update(columns)
            if example is not None:
                examples.append(example)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        for key in [k for k in complete_cache if k != case.case_id]:
            del complete_cache[key]
    progress("evaluate", 1.0, f"{len(test_cases)} cases")
    return rows, examples, np.stack(mus), np.stack(logvars)


def _training_latents(run: _Run, cases: Sequence, cache_dir, n_permutations: int, progress) -> tuple[dict, dict | None]:
    """(μ / log σ² of the training cases (see _encode_cases), their Gaussianity or None under two cases)."""
    progress("encode training cases", 0.0, f"{len(cases)} cases")
    latents = _encode_cases(run.bundle, cases, run.grid, run.grid_mode, run.device, cache_dir, progress)
    if len(cases) < 2:
        return latents, None
    return latents, latent_gaussianity(latents["mu"], latents["logvar"], n_permutations)


def evaluate(
    bundle,
    test_cases: Sequence,
    train_cases_for_latents: Sequence | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    cache_dir: str | None = None,
    n_examples: int = 2,
    n_permutations: int = 500,
    resample: str | None = None,
) -> EvaluationResult:
    """Evaluate ``bundle`` on ``test_cases`` (dataset.Case, any mix of classes).

    Args:
        bundle: a ModelBundle with centroids (completion needs DEV vectors).
        test_cases: held-out cases; a defective case's complete partner (same case_id,
            label "complete") is used as CMP ground truth when present.
        train_cases_for_latents: training cases whose μ / log σ² give the training-set
            Gaussianity and the PCA figure (optional).
        resample: "area" | "nearest", the resampling of the model input and output; None = the
            mode the model was trained with (``bundle.resample``).
        device: torch device for the networks.
        n_examples: defective cases per class kept as figure views (Figs. 7–8).
    """
    from SkullVAELib.vae.completion import resolve_device

    progress = progress or no_progress
    bundle.require_completion()
    grid_mode = resample or bundle.resample
    # complete first within an id: its mask is the CMP ground truth of the defective ones
    order = ("complete", *DEFECTS)
    test_cases = sorted(test_cases, key=lambda c: (c.case_id, order.index(c.label)))
    if not test_cases:
        raise SkullVAEError("no test cases to evaluate")
    run = _Run(bundle, tuple(bundle.network.grid), grid_mode, str(resolve_device(device)))
    bundle.to(run.device).eval()
    start = time.perf_counter()
    rows, examples, mu, logvar = _evaluate_cases(run, test_cases, n_examples, progress)
    test_latents = {
        "mu": mu,
        "logvar": logvar,
        "labels": [c.label for c in test_cases],
        "case_ids": [c.case_id for c in test_cases],
    }
    latents = {"test": test_latents}
    gaussianity = {"test": None, "train": None}
    if len(test_cases) >= 2:
        gaussianity["test"] = latent_gaussianity(mu, logvar, n_permutations)
    train_ids: list[str] = []
    if train_cases_for_latents:
        latents["train"], gaussianity["train"] = _training_latents(
            run, train_cases_for_latents, cache_dir, n_permutations, progress
        )
        train_ids = sorted({c.case_id for c in train_cases_for_latents})
    table1, implant, classification = summarise(rows)
    return EvaluationResult(
        rows=rows,
        table1=table1,
        implant=implant,
        gaussianity=gaussianity,
        classification=classification,
        latents=latents,
        examples=examples,
        test_ids=sorted({c.case_id for c in test_cases}),
        train_ids=train_ids,
        test_cases=list(test_cases),
        grid_mode=grid_mode,
        grid=run.grid,
        seconds=time.perf_counter() - start,
    )


def _mask(value) -> np.ndarray:
    """A bool array from a SkullImage or an array."""
    return np.asarray(getattr(value, "mask", value), dtype=bool)
