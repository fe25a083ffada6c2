"""The evaluation report: REPORT_DIR/report.md (Markdown tables + PNG figures),
metrics.csv (one row per test case) and summary.json (machine readable, for docs/RESULTS.md).

Figures (see :mod:`SkullVAELib.evaluation.figures`): fig3_training_curves.png, fig4_latent_pca.png,
fig5_gamma_sweep.png, fig6_dsc_boxplots.png (+ _model_grid), fig7_completions_cranial.png,
fig8_completions_facial.png. A figure without data (e.g. no training log) is skipped and
the report says so.
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
from SkullVAELib.evaluation.table1 import LABELS, METRIC_COLUMNS, EvaluationResult
from SkullVAELib.training.log import read_log

SWEEP_VIEW = {"cranial": 0, "facial": 2}  # axial from above shows the vault, sagittal the face


# --- small formatting helpers -------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def id_ranges(ids: Sequence[str]) -> str:
    """Compact "064-079" / "000, 003-005" text of zero-padded numeric ids (others listed)."""
    numeric = sorted(i for i in ids if i.isdigit())
    other = sorted(i for i in ids if not i.isdigit())
    parts, start, prev = [], None, None
    for i in numeric:
        if start is not None and int(i) == int(prev) + 1:
            prev = i
            continue
        if start is not None:
            parts.append(start if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(start if start == prev else f"{start}-{prev}")
    return ", ".join(parts + other) or "none"


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


def _gaussianity_section(g: dict) -> list[str]:
    rows = []
    for split in ("train", "test"):
        s = g.get(split)
        if not s:
            continue
        rows.append(
            [
                split,
                str(s["n"]),
                _fmt(s["aggregate"]["kl_total"], 3),
                _fmt(s["mu_only"]["kl_total"], 3),
                f"{s['mmd']['mmd2']:.4f}",
                f"{s['mmd']['p_value']:.3f}",
                f"{s['active_units']} / {s['d']}",
                s["verdict"],
            ]
        )
    if not rows:
        return ["Not computed (fewer than two cases)."]
    out = [
        _table(
            [
                "latents",
                "N",
                "KL aggregate q(z) ‖ N(0,I)",
                "KL N(mean μ, Cov μ) ‖ N(0,I)",
                "MMD²",
                "p (MMD)",
                "active units",
                "verdict",
            ],
            rows,
        ),
        "",
        "KL: moment-matched Gaussian of the aggregate posterior (Var = Var(μ) + E[σ²]) and of μ alone, in nats. "
        "MMD²: RBF kernel (median heuristic) between one z ~ q(z|x) per case and as many N(0, I) samples, "
        "permutation p-value. Active units: Var_x(μ_i) > 0.01. A latent with no active unit is reported as "
        "*collapsed*, never as Gaussian: a posterior that ignores its input is N(0, I) too.",
    ]
    s = g.get("train") or g.get("test")
    d = s["d"]
    per_dim = [
        [
            str(i),
            _fmt(s["mu_only"]["mean"][i], 3),
            _fmt(s["mu_variance"][i], 3),
            _fmt(s["aggregate"]["var"][i], 3),
            _fmt(s["aggregate"]["kl_per_dim"][i], 3),
            "yes" if s["active_mask"][i] else "no",
        ]
        for i in range(d)
    ]
    which = "training" if g.get("train") else "test"
    out += [
        "",
        f"Per dimension ({which} latents):",
        "",
        _table(["dim", "mean μ", "Var μ", "Var q(z)", "KL q(z_i) ‖ N(0,1)", "active"], per_dim),
    ]
    return out


def _markdown(result: EvaluationResult, facts: dict, figs: dict[str, Path | None]) -> str:
    t1 = result.table1
    epochs = facts["epochs"]
    epochs_text = ", ".join(f"{k}: {v}" for k, v in epochs.items()) if isinstance(epochs, dict) else _fmt(epochs)
    counts = {lab: sum(r["label"] == lab for r in result.rows) for lab in LABELS}
    lines = [
        "# SkullVAE evaluation report",
        "",
        f"**Completion is evaluated only on cases the model did not train on.** Held-out (test) case ids: "
        f"{id_ranges(result.test_ids)} ({len(result.test_ids)} ids; "
        + ", ".join(f"{counts[lab]} {lab}" for lab in LABELS)
        + " volumes).",
        "",
        f"Test ids, listed: {', '.join(result.test_ids)}.",
        "",
        _table(
            ["model", "value"],
            [
                [
                    "kind",
                    facts["kind"]
                    + (
                        " (β-VAE + decoupled decoder)" if facts["kind"] == "aggregated" else " (β-VAE, its own decoder)"
                    ),
                ],
                ["β", f"{facts['beta']:g}" if isinstance(facts["beta"], int | float) else _fmt(facts["beta"])],
                ["model grid", "×".join(map(str, facts["grid"]))],
                ["latent size d", str(facts["latent_size"])],
                ["epochs", epochs_text],
                [
                    "training case ids",
                    id_ranges(facts["train_case_ids"]) if facts["train_case_ids"] else "not recorded",
                ],
                [
                    "centroid (DEV) case ids",
                    id_ranges(facts["centroid_case_ids"]) if facts["centroid_case_ids"] else "not recorded",
                ],
                ["resampling", result.grid_mode],
                ["evaluation wall time", f"{result.seconds:.0f} s"],
            ],
        ),
        "",
        "## Table 1: reconstruction (REC) and completion (CMP) DSC on the test cases",
        "",
        "REC: encode μ, decode μ, DSC against the input. CMP: decode(μ + 1·DEV of the true defect class), "
        "DSC against the complete skull. *Model grid*: decoded > 0.5 vs the resampled target > 0.5 (as the paper). "
        "*Original*: probabilities mapped back to the original grid (512×512×Z for SkullFix). *Delivered*: the tool's output "
        "(defective input ∪ implant).",
        "",
        _table(
            ["resolution", "REC cranial", "REC facial", "REC complete", "CMP cranial", "CMP facial"],
            [
                [name, *[t1[key]["rec"][lab] for lab in LABELS], *[t1[key]["cmp"][lab] for lab in DEFECTS]]
                for name, key in (("model grid", "model_grid"), ("original", "original"))
            ]
            + [["original, delivered", "", "", "", *[t1["original_kept"]["cmp"][lab] for lab in DEFECTS]]],
        ),
        "",
        "## Implants at original resolution",
        "",
        "Against the ground-truth implant. DSC; bDSC: DSC within 10 mm of the defective skull; HD95: 95th "
        "percentile of the pooled bidirectional surface distances in mm (AutoImplant definition). Mean ± std "
        "(median); cases with an empty prediction have HD95 = ∞ and are counted apart.",
        "",
        _table(
            ["defect", "n", "DSC", "bDSC (10 mm)", "HD95 (mm)", "HD95 = ∞"],
            [
                [
                    lab,
                    str(result.implant[lab]["dsc"]["n"]),
                    *[
                        f"{_fmt(s['mean'], 3)} ± {_fmt(s['std'], 3)} ({_fmt(s['median'], 3)})"
                        for s in (result.implant[lab][m] for m in ("dsc", "bdsc", "hd95_mm"))
                    ],
                    str(result.implant[lab]["hd95_mm"]["n_infinite"]),
                ]
                for lab in DEFECTS
            ],
        ),
        "",
        '## Defect type classification (`defect="auto"`)',
        "",
        f"Accuracy {_fmt(result.classification['accuracy'], 3)} on {result.classification['n']} defective test "
        "skulls. Confusion (rows: true, columns: chosen):",
        "",
        _table(
            ["true \\ chosen", *DEFECTS],
            [[t, *[str(result.classification["confusion"][t].get(c, 0)) for c in DEFECTS]] for t in DEFECTS],
        ),
        "",
        "## Latent Gaussianity of the aggregate posterior",
        "",
        *_gaussianity_section(result.gaussianity),
        "",
        "## Figures",
        "",
    ]
    captions = {
        "fig3": "Figure 3: training curves (Dice loss left, KLD right).",
        "fig4": "Figure 4: PCA of μ by class, class centroids (★), arrows from the latent origin to the centroids "
        "and DEV vectors (red) from the defect centroids to the complete centroid.",
        "fig5": "Figure 5: γ sweep on one cranial and one facial test case (decoded skull grey, implant yellow).",
        "fig6": "Figure 6: REC and CMP DSC per class on the test cases (original resolution).",
        "fig6_model": "Figure 6 (model grid).",
        "fig7": "Figure 7: cranial completions: defective bone grey, predicted implant yellow, true implant cyan.",
        "fig8": "Figure 8: facial completions: defective bone grey, predicted implant yellow, true implant cyan.",
    }
    for key, caption in captions.items():
        path = figs.get(key)
        lines += [f"![{caption}]({path.name})", "", caption, ""] if path else [f"{caption} *(no data)*", ""]
    lines += ["## Per-case metrics", "", "See `metrics.csv` (one row per test volume) and `summary.json`.", ""]
    return "\n".join(lines)


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
    figs["fig4"] = figures.plot_latent_pca(result.latents, bundle.centroids, out / "fig4_latent_pca.png")
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
    atomic_write_text(path, _markdown(result, facts, figs))
    return path
