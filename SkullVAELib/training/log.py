"""The per-epoch training log ``training_log.csv``: columns, reading and atomic rewriting.

One log for every trainer of the loop (:mod:`.loop`): one row per stage and epoch. The VAE's
stages 1 and 2 fill every column (losses on the authors' per-batch scale, i.e. the mean
per-sample term times the nominal batch size, so they compare with the paper's Fig. 3); the
learned facial refiner's rows (stage 3; an epoch is one validation round) fill ``loss`` (its
Dice + cross-entropy), ``seconds``, ``step``, ``val_dice`` and ``best_epoch``.

* ``stage`` 1|2|3|4 (4: the cranial residual), ``epoch`` (1-based), ``beta`` (β of that stage; 0 for stage 2),
* ``dice`` = dice_weight · Σ_batch soft-Dice loss, ``kld`` = Σ_batch Σ_latent KLD,
  ``beta_kld`` = β · kld, ``loss`` = recon_scale · dice + beta_kld (the optimised objective),
* ``dice_score`` = mean per-sample soft Dice coefficient (1 − Dice loss) in [0, 1],
* ``kld_per_dim`` = mean KLD per sample and latent dimension (nats),
* ``seconds`` = wall time of the epoch, ``step`` = optimiser steps of the stage at its end,
* ``val_dice`` = mean soft Dice of the validation reconstructions (z = μ, or μ + σ in a ``mu_plus_sigma`` stage 2; eval mode) on the
  epochs where validation ran (empty otherwise), ``best_epoch`` = the epoch whose weights are
  kept so far, ``early_stop`` = 1 on the epoch where validation-based early stopping ended the stage.

A run rewrites the log with its own rows in place of its stage's (a VAE stage: of the later VAE stage
too, :meth:`~.loop.Trainer.replaced_stages`); the other trainers' rows are kept.

The figure drawn from these logs (``curves.png``, the paper's Fig. 3) is not made here:
engines write logs, figure modules draw them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from SkullVAELib.core.atomic import atomic_write_text

LOG_NAME = "training_log.csv"
CURVES_NAME = "curves.png"  # the figure a workflow draws from the logs of one model folder
COLUMNS = (
    "stage",
    "epoch",
    "beta",
    "dice",
    "kld",
    "beta_kld",
    "loss",
    "dice_score",
    "kld_per_dim",
    "seconds",
    "step",
    "val_dice",
    "best_epoch",
    "early_stop",
)
_INTEGER_COLUMNS = ("stage", "epoch", "step", "best_epoch", "early_stop")


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a training log as dicts of floats (integer columns as int); [] if absent.

    Empty cells (e.g. ``val_dice`` on epochs without validation) are left out of the row.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float] = {}
            for key in COLUMNS:
                if raw.get(key) not in (None, ""):
                    row[key] = int(float(raw[key])) if key in _INTEGER_COLUMNS else float(raw[key])
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


def curve_logs(out_dir: str | os.PathLike) -> list[Path]:
    """The training logs drawn into ``curves.png``: this folder's and its sub-folders' (e.g. both β runs)."""
    out_dir = Path(out_dir)
    return [p for p in [out_dir / LOG_NAME, *sorted(out_dir.glob(f"*/{LOG_NAME}"))] if p.is_file()]
