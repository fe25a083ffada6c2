"""Deprecated alias (one release): the log moved to :mod:`SkullVAELib.training_log`.

What remains here is the drawing of Fig. 3 (``plot_curves``), which belongs with the other
figures; engines (the trainer) import no plotting code. Import the log functions from
``SkullVAELib.training_log``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.atomic import atomic_path
from SkullVAELib.training_log import COLUMNS, CURVES_NAME, LOG_NAME, curve_logs, read_log, write_log

__all__ = ["COLUMNS", "CURVES_NAME", "LOG_NAME", "curve_logs", "plot_curves", "read_log", "write_log"]


def _runs(rows: Sequence[dict[str, float]]) -> dict[tuple[int, float], list[dict[str, float]]]:
    runs: dict[tuple[int, float], list[dict[str, float]]] = {}
    for row in rows:
        runs.setdefault((int(row["stage"]), float(row.get("beta", 0.0))), []).append(row)
    return runs


def plot_curves(logs: Sequence[str | os.PathLike], png_path: str | os.PathLike) -> Path | None:
    """Figure 3 of the paper from one or more training logs (e.g. the β = 100 and β = 1e-4 bundles).

    Left: the Dice loss of every stage-1 run and of the stage-2 (decoupled) decoder.
    Right: the stage-1 KLD; the largest-β run on the left y-axis and the smallest-β run on a
    second y-axis (their scales differ by orders of magnitude). Returns the PNG path, or
    None when the logs hold no rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[dict[str, float]] = []
    for log in logs:
        rows += read_log(log)
    runs = _runs(rows)
    if not runs:
        return None
    fig, (ax_dice, ax_kld) = plt.subplots(1, 2, figsize=(11, 4))
    for (stage, beta), run in sorted(runs.items()):
        label = "decoupled decoder (stage 2)" if stage == 2 else f"VAE β = {beta:g}"
        ax_dice.plot([r["epoch"] for r in run], [r["dice"] for r in run], label=label)
    ax_dice.set(xlabel="epoch", ylabel="Dice loss (×80, per batch)", title="Dice")
    ax_dice.legend()
    stage1 = sorted((beta, run) for (stage, beta), run in runs.items() if stage == 1)
    if stage1:
        axes = [ax_kld] if len(stage1) == 1 else [ax_kld, ax_kld.twinx()]
        picks = [stage1[-1]] if len(stage1) == 1 else [stage1[-1], stage1[0]]
        for ax, (beta, run), color in zip(axes, picks, ("tab:red", "tab:blue"), strict=False):
            ax.plot([r["epoch"] for r in run], [r["kld"] for r in run], color=color, label=f"β = {beta:g}")
            ax.set_ylabel(f"KLD (β = {beta:g})", color=color)
            ax.tick_params(axis="y", colors=color)
    ax_kld.set(xlabel="epoch", title="KLD")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return png_path
