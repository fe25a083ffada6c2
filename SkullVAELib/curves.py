"""The per-epoch training log (``training_log.csv``) and the Figure-3-style curves (``curves.png``).

CSV columns (one row per stage and epoch; losses on the authors' per-batch scale, i.e. the
mean per-sample term times the nominal batch size, so they compare with the paper's Fig. 3):

* ``stage`` 1|2, ``epoch`` (1-based), ``beta`` (β of that stage; 0 for stage 2),
* ``dice`` = dice_weight · Σ_batch soft-Dice loss, ``kld`` = Σ_batch Σ_latent KLD,
  ``beta_kld`` = β · kld, ``loss`` = dice + beta_kld,
* ``dice_score`` = mean per-sample soft Dice coefficient (1 − Dice loss) in [0, 1],
* ``kld_per_dim`` = mean KLD per sample and latent dimension (nats),
* ``seconds`` = wall time of the epoch.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from SkullVAELib.atomic import atomic_path, atomic_write_text

LOG_NAME = "training_log.csv"
CURVES_NAME = "curves.png"
COLUMNS = ("stage", "epoch", "beta", "dice", "kld", "beta_kld", "loss", "dice_score", "kld_per_dim", "seconds")


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a training log as dicts of floats (``stage``/``epoch`` as int); [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float] = {}
            for key in COLUMNS:
                if raw.get(key) not in (None, ""):
                    row[key] = int(raw[key]) if key in ("stage", "epoch") else float(raw[key])
            rows.append(row)
    return rows


def write_log(path: str | os.PathLike, rows: Iterable[dict[str, float]]) -> None:
    """Rewrite the whole CSV atomically (cheap: a few hundred rows)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


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


def curve_logs(out_dir: str | os.PathLike) -> list[Path]:
    """The training logs drawn into ``curves.png``: this folder's and its sub-folders' (e.g. both β runs)."""
    out_dir = Path(out_dir)
    return [p for p in [out_dir / LOG_NAME, *sorted(out_dir.glob(f"*/{LOG_NAME}"))] if p.is_file()]
