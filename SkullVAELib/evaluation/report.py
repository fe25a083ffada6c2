"""The evaluation report: REPORT_DIR/report.md (Markdown tables + PNG figures),
metrics.csv (one row per test case) and summary.json (machine readable, for docs/RESULTS.md).

Figures (see :mod:`SkullVAELib.evaluation.figures`): fig3_training_curves.png, fig4_latent_pca.png,
fig5_gamma_sweep.png, fig6_dsc_boxplots.png (+ _model_grid), fig7_completions_cranial.png,
fig8_completions_facial.png. A figure without data (e.g. no training log) is skipped and
the report says so. The text of report.md: :mod:`SkullVAELib.evaluation.report_markdown`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.config import DEFECTS, GAMMAS
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.evaluation import figures
from SkullVAELib.evaluation.report_markdown import id_ranges as id_ranges  # public here too
from SkullVAELib.evaluation.report_markdown import markdown_report
from SkullVAELib.evaluation.table1 import METRIC_COLUMNS, EvaluationResult
from SkullVAELib.training.log import read_log

SWEEP_VIEW = {"cranial": 0, "facial": 2}  # axial from above shows the vault, sagittal the face


# --- JSON ----------------------------------------------------------------------------------
def _jsonable(value):
    """JSON values: arrays → lists, NaN/inf → null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --- model facts ------------------------------------------------------------------------------
def model_facts(bundle, train_log_rows: list[dict]) -> dict:
    """kind, β, grid, latent size, epochs per stage (from bundle.info, else the training log)."""
    info = dict(getattr(bundle, "info", {}) or {})
    epochs = {}
    for row in train_log_rows:
        stage = int(row["stage"])
        epochs[stage] = max(epochs.get(stage, 0), int(row["epoch"]))
    betas = sorted({float(r["beta"]) for r in train_log_rows if int(r["stage"]) == 1 and "beta" in r})
    beta = info.get("beta", info.get("stage1", {}).get("beta") if isinstance(info.get("stage1"), dict) else None)
    if beta is None and betas:
        beta = betas[-1]
    return {
        "kind": bundle.kind,
        "beta": beta,
        "grid": list(bundle.network.grid),
        "latent_size": bundle.network.latent_size,
        "channels": list(bundle.network.channels),
        "epochs": _epochs(info, epochs),
        "train_case_ids": info.get("train_case_ids"),
        "centroid_case_ids": (getattr(bundle, "completion_info", None) or {}).get("case_ids"),
    }


def _epochs(info: dict, from_log: dict[int, int]) -> dict | None:
    """{"stage1": n, "stage2": n} from the bundle info (trainer keys), else from the log."""
    recorded = {f"stage{k}": info[f"epochs_stage{k}"] for k in (1, 2) if info.get(f"epochs_stage{k}") is not None}
    return recorded or {f"stage{k}": v for k, v in sorted(from_log.items())} or None


# --- figures needing the model -----------------------------------------------------------------
def gamma_sweep_rows(result: EvaluationResult, bundle, gammas=GAMMAS, device: str = "cpu", progress=None) -> list:
    """Fig. 5 data: for the first cranial and first facial test case, one view per γ."""
    from SkullVAELib.core.config import CompletionConfig
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.vae.completion import complete

    progress = progress or no_progress
    picks = [next((c for c in result.test_cases if c.label == d), None) for d in DEFECTS]
    picks = [c for c in picks if c is not None and c.label in (bundle.defect_classes or [])]
    rows = []
    total = max(len(picks) * len(gammas), 1)
    for n, case in enumerate(picks):
        skull = read_skull(case.path, kind="binary")
        panels = []
        for k, gamma in enumerate(gammas):
            progress("γ sweep", (n * len(gammas) + k) / total, f"{case.label} {case.case_id} γ = {gamma:g}")
            res = complete(
                skull,
                bundle,
                CompletionConfig(gamma=float(gamma), defect=case.label, resample=result.grid_mode),
                device,
            )
            views = figures.orthogonal_views(res.raw.mask, res.implant.mask, None, skull.spacing)
            panels.append((float(gamma), views[SWEEP_VIEW[case.label]]))
        rows.append({"title": f"{case.label} {case.case_id}", "panels": panels})
    progress("γ sweep", 1.0, "done")
    return rows


def _completion_codes(latents: dict, bundle) -> dict:
    """``latents`` ({split: {"mu" (N, d), "logvar" (N, d), "labels", ...}}) with "mu" replaced by the code
    ``bundle.latent_code(μ, log σ²)`` (N, d) that the centroids and DEV vectors are means of: μ + σ for a
    decoupled decoder trained on z = μ + σ, else μ itself (then the latents come back as they are)."""
    return {
        split: {**part, "mu": bundle.latent_code(np.asarray(part["mu"]), np.asarray(part["logvar"]))}
        for split, part in latents.items()
    }


# --- the files --------------------------------------------------------------------------------
def write_metrics_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """One line per test case: case_id, label, metrics, auto defect, seconds (NaN → empty)."""
    columns = ["case_id", "label", *METRIC_COLUMNS, "auto_defect", "auto_confidence", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = {}
        for key in columns:
            v = row.get(key)
            if isinstance(v, float):
                v = "" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.6g}")
            out[key] = v
        writer.writerow(out)
    atomic_write_text(path, buf.getvalue())


def write_report(
    result: EvaluationResult,
    bundle,
    out_dir: str | os.PathLike,
    train_log_csv: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    gammas: Sequence[float] = GAMMAS,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> Path:
    """Write report.md, metrics.csv, summary.json and the figures into ``out_dir``.

    Args:
        result: from :func:`SkullVAELib.evaluation.table1.evaluate`.
        bundle: the evaluated ModelBundle (for the γ sweep and the model facts).
        train_log_csv: training_log.csv of the model (one path or several, e.g. both models).
        gammas: γ values of Fig. 5 (empty: no sweep).
    Returns the path of report.md.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs = (
        []
        if train_log_csv is None
        else ([train_log_csv] if isinstance(train_log_csv, str | os.PathLike) else list(train_log_csv))
    )
    log_rows = [r for log in logs for r in read_log(log)]
    facts = model_facts(bundle, log_rows)
    figs: dict[str, Path | None] = {}
    figs["fig3"] = figures.plot_curves(logs, out / "fig3_training_curves.png") if log_rows else None
    codes = _completion_codes(result.latents, bundle)  # the space of the centroids and DEV vectors
    figs["fig4"] = figures.plot_latent_pca(codes, bundle.centroids, out / "fig4_latent_pca.png")
    sweep = gamma_sweep_rows(result, bundle, gammas, device, progress) if gammas else []
    figs["fig5"] = figures.plot_gamma_sweep(sweep, out / "fig5_gamma_sweep.png")
    figs["fig6"] = figures.plot_dsc_boxplots(result.rows, out / "fig6_dsc_boxplots.png", "original")
    figs["fig6_model"] = figures.plot_dsc_boxplots(result.rows, out / "fig6_dsc_boxplots_model_grid.png", "model")
    for key, label in (("fig7", "cranial"), ("fig8", "facial")):
        figs[key] = figures.plot_completion_views(
            [e for e in result.examples if e["label"] == label], out / f"{key}_completions_{label}.png"
        )
    write_metrics_csv(result.rows, out / "metrics.csv")
    summary = {
        "model": facts,
        "test_ids": result.test_ids,
        "train_ids_for_latents": result.train_ids,
        "grid_mode": result.grid_mode,
        "table1": result.table1,
        "implant": result.implant,
        "classification": result.classification,
        "gaussianity": result.gaussianity,
        "figures": {k: (v.name if v else None) for k, v in figs.items()},
        "evaluation_seconds": result.seconds,
    }
    atomic_write_text(out / "summary.json", json.dumps(_jsonable(summary), indent=1, allow_nan=False) + "\n")
    path = out / "report.md"
    atomic_write_text(path, markdown_report(result, facts, figs))
    return path
