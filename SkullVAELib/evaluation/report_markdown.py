"""The text of REPORT_DIR/report.md: one function per section of the report, in reading order.

:func:`markdown_report` joins them; :mod:`SkullVAELib.evaluation.report` writes the file next to
the figures, metrics.csv and summary.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.config import DEFECTS
from SkullVAELib.data.case_ids import format_id_spec
from SkullVAELib.evaluation.table1 import LABELS, EvaluationResult

FIGURE_CAPTIONS = {
    "fig3": "Figure 3: training curves (Dice loss left, KLD right).",
    "fig4": "Figure 4: PCA of the latent codes (μ; μ + σ for a decoder trained on μ + σ) by class, class centroids (★), arrows from the latent origin to the centroids "
    "and DEV vectors (red) from the defect centroids to the complete centroid.",
    "fig5": "Figure 5: γ sweep on one cranial and one facial test case (decoded skull grey, implant yellow).",
    "fig6": "Figure 6: REC and CMP DSC per class on the test cases (original resolution).",
    "fig6_model": "Figure 6 (model grid).",
    "fig7": "Figure 7: cranial completions: defective bone grey, predicted implant yellow, true implant cyan.",
    "fig8": "Figure 8: facial completions: defective bone grey, predicted implant yellow, true implant cyan.",
}


# --- small formatting helpers -------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, NaN and None as "–", infinity as "∞"."""
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
    """A Markdown table; string cells as they are, other cells through :func:`_fmt`."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def id_ranges(ids: Sequence[str]) -> str:
    """Compact "064-079" / "000, 003-005" text of case ids (others listed), or "none"."""
    return format_id_spec(ids) or "none"


def _recorded_ids(ids: Sequence[str] | None) -> str:
    """:func:`id_ranges` of ids a model recorded, or "not recorded"."""
    return id_ranges(ids) if ids else "not recorded"


# --- the sections -------------------------------------------------------------------------
def _section(heading: str, text: str, table: str) -> list[str]:
    """The lines of a section with one table: "## heading", its explanation, the table (each then a blank line)."""
    return [f"## {heading}", "", text, "", table, ""]


def _header(result: EvaluationResult) -> list[str]:
    """Title and the held-out case ids (ranges, volumes per class, then listed one by one)."""
    counts = {lab: sum(r["label"] == lab for r in result.rows) for lab in LABELS}
    return [
        "# SkullVAE evaluation report",
        "",
        f"**Completion is evaluated only on cases the model did not train on.** Held-out (test) case ids: "
        f"{id_ranges(result.test_ids)} ({len(result.test_ids)} ids; "
        + ", ".join(f"{counts[lab]} {lab}" for lab in LABELS)
        + " volumes).",
        "",
        f"Test ids, listed: {', '.join(result.test_ids)}.",
        "",
    ]


def _model_section(result: EvaluationResult, facts: dict) -> list[str]:
    """The model facts table (kind, β, grid, latent size, epochs, case ids) and the evaluation setting."""
    epochs = facts["epochs"]
    epochs_text = ", ".join(f"{k}: {v}" for k, v in epochs.items()) if isinstance(epochs, dict) else _fmt(epochs)
    kind_note = " (β-VAE + decoupled decoder)" if facts["kind"] == "aggregated" else " (β-VAE, its own decoder)"
    beta = facts["beta"]
    rows = [
        ["kind", facts["kind"] + kind_note],
        ["β", f"{beta:g}" if isinstance(beta, int | float) else _fmt(beta)],
        ["model grid", "×".join(map(str, facts["grid"]))],
        ["latent size d", str(facts["latent_size"])],
        ["epochs", epochs_text],
        ["training case ids", _recorded_ids(facts["train_case_ids"])],
        ["centroid (DEV) case ids", _recorded_ids(facts["centroid_case_ids"])],
        ["resampling", result.grid_mode],
        ["evaluation wall time", f"{result.seconds:.0f} s"],
    ]
    return [_table(["model", "value"], rows), ""]


def _table1_section(table1: dict) -> list[str]:
    """Table 1: mean REC and CMP DSC per class on the model grid, at original resolution and as delivered."""
    rows = [
        [name, *[table1[key]["rec"][lab] for lab in LABELS], *[table1[key]["cmp"][lab] for lab in DEFECTS]]
        for name, key in (("model grid", "model_grid"), ("original", "original"))
    ]
    rows.append(["original, delivered", "", "", "", *[table1["original_kept"]["cmp"][lab] for lab in DEFECTS]])
    return _section(
        "Table 1: reconstruction (REC) and completion (CMP) DSC on the test cases",
        "REC: encode μ, decode μ, DSC against the input. CMP: decode(μ + 1·DEV of the true defect class), "
        "DSC against the complete skull. *Model grid*: decoded > 0.5 vs the resampled target > 0.5 (as the paper). "
        "*Original*: probabilities mapped back to the original grid (512×512×Z for SkullFix). *Delivered*: the tool's output "
        "(defective input ∪ implant).",
        _table(["resolution", "REC cranial", "REC facial", "REC complete", "CMP cranial", "CMP facial"], rows),
    )


def _implant_section(implant: dict) -> list[str]:
    """Implant DSC, bDSC and HD95 per defect class: mean ± std (median), and the count of HD95 = ∞."""
    rows = [
        [
            lab,
            str(implant[lab]["dsc"]["n"]),
            *[
                f"{_fmt(s['mean'], 3)} ± {_fmt(s['std'], 3)} ({_fmt(s['median'], 3)})"
                for s in (implant[lab][m] for m in ("dsc", "bdsc", "hd95_mm"))
            ],
            str(implant[lab]["hd95_mm"]["n_infinite"]),
        ]
        for lab in DEFECTS
    ]
    return _section(
        "Implants at original resolution",
        "Against the ground-truth implant. DSC; bDSC: DSC within 10 mm of the defective skull; HD95: 95th "
        "percentile of the pooled bidirectional surface distances in mm (AutoImplant definition). Mean ± std "
        "(median); cases with an empty prediction have HD95 = ∞ and are counted apart.",
        _table(["defect", "n", "DSC", "bDSC (10 mm)", "HD95 (mm)", "HD95 = ∞"], rows),
    )


def _classification_section(classification: dict) -> list[str]:
    """Accuracy and confusion matrix of the defect type that ``defect="auto"`` chose."""
    confusion = classification["confusion"]
    return _section(
        'Defect type classification (`defect="auto"`)',
        f"Accuracy {_fmt(classification['accuracy'], 3)} on {classification['n']} defective test "
        "skulls. Confusion (rows: true, columns: chosen):",
        _table(["true \\ chosen", *DEFECTS], [[t, *[str(confusion[t].get(c, 0)) for c in DEFECTS]] for t in DEFECTS]),
    )


def _gaussianity_section(g: dict) -> list[str]:
    """The body of the latent Gaussianity section: one summary row per split, then the per-dimension table."""
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


def _figures_section(figs: dict[str, Path | None]) -> list[str]:
    """Every figure with its caption, in order; a figure without data is named with "(no data)"."""
    lines = ["## Figures", ""]
    for key, caption in FIGURE_CAPTIONS.items():
        path = figs.get(key)
        lines += [f"![{caption}]({path.name})", "", caption, ""] if path else [f"{caption} *(no data)*", ""]
    return lines


def markdown_report(result: EvaluationResult, facts: dict, figs: dict[str, Path | None]) -> str:
    """The text of report.md.

    Args:
        result: from :func:`SkullVAELib.evaluation.table1.evaluate`.
        facts: from :func:`SkullVAELib.evaluation.report.model_facts`.
        figs: figure key ("fig3" … "fig8", "fig6_model") → its PNG (only the name is written), None without data.
    """
    lines = [
        *_header(result),
        *_model_section(result, facts),
        *_table1_section(result.table1),
        *_implant_section(result.implant),
        *_classification_section(result.classification),
        "## Latent Gaussianity of the aggregate posterior",
        "",
        *_gaussianity_section(result.gaussianity),
        "",
        *_figures_section(figs),
        "## Per-case metrics",
        "",
        "See `metrics.csv` (one row per test volume) and `summary.json`.",
        "",
    ]
    return "\n".join(lines)
