"""When a training run ends, validates and checkpoints (:class:`Schedule`), and the seeds of each
epoch's random streams (:func:`epoch_seed`), for :class:`SkullVAELib.training.loop.Trainer`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def epoch_seed(seed: int, stage: int, epoch: int, stream: int) -> int:
    """Independent 63-bit seed per (seed, stage, epoch, stream): 0 shuffle, 1 ε, 2 + rank augmentation."""
    return int(np.random.SeedSequence([seed, stage, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class Schedule:
    """When a run ends and when it validates and checkpoints (counts in epochs unless named otherwise)."""

    epochs: float  # an int, or math.inf when the steps or the seconds end the run
    seed: int = 0
    max_steps: float = math.inf  # optimiser steps in all, resumed ones included
    max_seconds: float = math.inf  # wall time of this run (a resume starts a new budget)
    val_every: int = 1
    patience: int = 0
    checkpoint_every: int = 1
    checkpoint_minutes: float = 5.0

    @classmethod
    def of(cls, cfg: Any) -> Schedule:
        """The schedule of a ``core.config.TrainConfig``."""
        return cls(
            epochs=cfg.epochs,
            seed=cfg.seed,
            val_every=cfg.val_every,
            patience=cfg.patience,
            checkpoint_every=cfg.checkpoint_every,
            checkpoint_minutes=cfg.checkpoint_minutes,
        )
