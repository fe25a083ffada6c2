"""A :class:`~SkullVAELib.training.loop.Trainer` counted in optimiser steps, for the learned implant
sources (the facial refiner, the cranial residual): every step draws a fresh batch, there is no
epoch over a data set, a validation every ``val_every`` steps closes a "round", and the run stops
after ``steps`` steps or ``seconds`` of wall time. AdamW; the loss is averaged over each round.

A subclass builds its batches and loss in ``train_step`` (ending in :meth:`StepTrainer.optimise`),
scores ``validation_dice`` and names its ``stage``, ``checkpoint_name``, ``label`` and ``describe``.
Its training settings need ``seed``, ``steps``, ``seconds``, ``checkpoint_minutes``, ``lr``,
``weight_decay``, ``val_every`` and ``to_dict()``; ``precision`` ("auto" unless given:
:func:`~SkullVAELib.core.devices.training_bf16`) chooses bfloat16 autocast. On a CPU the network is
kept in the channels-last 3D layout, oneDNN's fast one for 3D convolutions.

``lr_schedule`` ("constant" unless given, :data:`~SkullVAELib.core.config.LR_SCHEDULES`): "cosine"
lowers the learning rate from ``lr`` to 0 over the run's budget, whichever of its steps or its
seconds ends it first, so a run bounded by wall time anneals by the clock on any machine. The share
of the budget spent is kept in the optimiser's groups (``budget_fraction``), so a resume continues
the decay over its own new budget instead of starting it again.

``ema`` (0 unless given): a decay in (0, 1) keeps a moving average of the weights
(:mod:`.averaging`); validation scores it, the best weights are the average's, and a checkpoint
carries it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from SkullVAELib.core.devices import training_bf16
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.training.averaging import WeightAverage
from SkullVAELib.training.distributed import DistContext
from SkullVAELib.training.loop import EpochCallback, Trainer
from SkullVAELib.training.schedule import Schedule


class StepTrainer(Trainer):
    """Trains ``make_network()`` (built after seeding torch with ``train_cfg.seed``) on one device."""

    acc_size = 2  # Σ loss, steps of the round

    def __init__(
        self,
        make_network: Callable[[], torch.nn.Module],
        network_cfg: Any,
        train_cfg: Any,
        out_dir: str | Path,
        device: str,
        *,
        fingerprints: dict[str, torch.Tensor],
        has_validation: bool,
        progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        torch.manual_seed(train_cfg.seed)
        network = make_network().to(device)
        if torch.device(device).type == "cpu":
            network = network.to(memory_format=torch.channels_last_3d)
        schedule = Schedule(
            epochs=math.inf,
            seed=train_cfg.seed,
            max_steps=train_cfg.steps,
            max_seconds=train_cfg.seconds,
            checkpoint_minutes=train_cfg.checkpoint_minutes,
        )
        super().__init__(
            network,
            network,
            train_cfg,
            DistContext(0, 1, torch.device(device)),
            Path(out_dir),
            schedule=schedule,
            optimizer=torch.optim.AdamW(network.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay),
            fingerprints=fingerprints,
            progress=progress,
            on_epoch=on_epoch,
            has_validation=has_validation,
            bf16=training_bf16(getattr(train_cfg, "precision", "auto"), device),
        )
        self.network_cfg, self.train_cfg = network_cfg, train_cfg
        self.lr_schedule = getattr(train_cfg, "lr_schedule", "constant")
        self.fraction_before = 0.0  # the share of the budget earlier runs spent (a resume)
        decay = float(getattr(train_cfg, "ema", 0.0))
        self.average = WeightAverage(network, decay) if decay > 0 else None

    def config_dict(self) -> dict:
        return {**self.train_cfg.to_dict(), "network": dataclasses.asdict(self.network_cfg)}

    def resume_defaults(self) -> dict:
        # a checkpoint from before ``lr_schedule`` existed held its learning rate
        defaults = {**super().resume_defaults(), "lr_schedule": "constant"}
        return {**defaults, "network": dataclasses.asdict(type(self.network_cfg)())}

    def on_train_start(self) -> None:
        super().on_train_start()
        self.fraction_before = float(self.optimizer.param_groups[0].get("budget_fraction", 0.0))

    def budget_fraction(self) -> float:
        """The share of the run's budget spent before the next step, in [0, 1]: by steps, or by this
        run's wall time over the share earlier runs left (``fraction_before``)."""
        s = self.schedule
        seconds = (time.monotonic() - self.started) / s.max_seconds
        by_time = self.fraction_before + (1.0 - self.fraction_before) * seconds
        return min(1.0, max(self.steps_done / s.max_steps, by_time))

    def set_learning_rate(self) -> None:
        """The learning rate of the next step (``lr_schedule``); the budget spent joins the groups."""
        fraction = self.budget_fraction()
        # the cosine is one line; torch's schedulers count steps or epochs, not a wall-time budget
        factor = 0.5 * (1.0 + math.cos(math.pi * fraction)) if self.lr_schedule == "cosine" else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.train_cfg.lr * factor
            group["budget_fraction"] = fraction

    def epoch_batches(self, epoch: int) -> range:
        """The steps up to the next validation (fewer at the end of the budget)."""
        return range(int(min(self.train_cfg.val_every, self.schedule.max_steps - (self.steps_done - self.step))))

    def optimise(self, loss: torch.Tensor) -> None:
        """One AdamW step on ``loss`` at the scheduled learning rate; the loss joins the round's mean."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.set_learning_rate()
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        self.acc[0] += loss.detach().double()
        self.acc[1] += 1

    def validation_weights(self) -> contextlib.AbstractContextManager:
        """The moving average of the weights (``ema``), else the model's own."""
        return contextlib.nullcontext() if self.average is None else self.average.swapped_into(self.model)

    def checkpoint_extras(self) -> dict:
        return {} if self.average is None else {"ema": self.average.state_dict()}

    def restore_extras(self, rec: dict) -> None:
        if self.average is not None:
            self.average.load_state_dict(rec["ema"])

    def restore_best(self) -> None:
        """The best validated weights; without validation, the moving average when there is one (at
        the end of the run, and after an interrupt: the weights file then holds the same kind)."""
        super().restore_best()
        if self.best is None and self.average is not None:
            self.model.load_state_dict(self.average.weights())

    def epoch_row(self, sums: list[float]) -> dict:
        return {"loss": sums[0] / max(sums[1], 1.0)}

    def position(self) -> str:
        return f"step {self.steps_done}/{self.train_cfg.steps}"

    def summary(self) -> dict:
        """What the weights file records about this run (steps, the best validation)."""
        best = self.best or {}
        return {
            "steps": self.steps_done,
            "best_step": best.get("step", self.steps_done),
            "best_val_dice": best.get("score", math.nan),
            "train": self.train_cfg.to_dict(),
        }
