"""The training curves of a learned implant source as a PNG (the facial refiner, the cranial residual).

Matplotlib's Agg canvas only, no SimpleITK: it runs on a bare GPU machine after ``train-refiner
--grids`` or ``train-residual --pools``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def plot_training_rounds(
    rows: Sequence[dict], path: str | os.PathLike, loss_label: str, baselines: dict[str, float] | None = None
) -> Path:
    """The training loss and the validation Dice of a learned source's rounds (``Trainer.history``:
    "step", "loss", "val_dice") against steps, with ``baselines`` ({label: Dice}) as flat lines; a PNG."""
    from matplotlib.figure import Figure

    from SkullVAELib.core.atomic import atomic_path

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=loss_label)
    validated = [r for r in rows if "val_dice" in r]
    if validated:
        ax.plot([r["step"] for r in validated], [r["val_dice"] for r in validated], label="validation Dice")
    for n, (label, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{n + 2}", label=label)
    ax.set_xlabel("step")
    ax.legend()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png", facecolor="white")
    return path
