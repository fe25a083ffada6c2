"""The one training loop: the VAE's two stages and the learned facial refiner run on :class:`Trainer`.

Order of events (split the way nnU-Net's trainer is): ``run`` → ``_resume_state`` (if resuming) →
``on_train_start`` → per epoch: ``on_epoch_start`` → ``train_step`` per batch → epoch row →
validation (``validation_dice``, ``on_validation``) → ``on_epoch_end`` → checkpoint when due →
``on_train_end``. A subclass says what an epoch's batches are (``epoch_batches``), what a step does
(``train_step``, sums into ``self.acc``), what a row holds (``epoch_row``) and how validation scores
(``validation_dice``): ``vae.stages`` (the VAE) and :mod:`.steps` (the learned implant sources).

* Budget (:class:`Schedule`): ``epochs``, ``max_steps`` and ``max_seconds`` (this run's wall time),
  whichever ends first; running out of time closes the current epoch early (row, validation,
  checkpoint) and a resume continues.
* Randomness: each epoch's generators (``generator_streams``) are seeded from (seed, stage, epoch,
  stream), and a checkpoint stores their states, so a resume continues exactly, even mid-epoch.
* Host-sync free steps: the host reads ``self.acc`` once per epoch (and at a checkpoint).
* Checkpoints (``checkpoints/stage{N}.pt`` or ``NAME.pt``): every ``checkpoint_every`` epochs
  (0 = by wall time only) and mid-epoch whenever ``checkpoint_minutes`` have passed. Ctrl-C or
  SIGTERM: the step finishes, a checkpoint is written, ``KeyboardInterrupt`` is raised (the CLI
  exits 130; :meth:`Trainer.restore_best` gives the caller the best weights so far). A fresh
  (not resumed) run deletes its older checkpoint first.
* Validation (optional): every ``val_every`` epochs and after the last; the best weights are kept
  and restored at the end; ``patience`` > 0 stops after that many evaluations without improvement.
* Log: one row per epoch in ``training_log.csv`` (:mod:`.log`). DDP: every rank runs this loop in
  lock-step (``vae.stages``); rank 0 logs and saves; a stop (signal, time) is agreed by all ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.training.distributed import DistContext
from SkullVAELib.training.log import LOG_NAME, read_log, write_log
from SkullVAELib.training.schedule import Schedule, epoch_seed

EpochCallback = Callable[[dict], None]
# (x (B, 1, X, Y, Z) float32 on the training device, generator on that device) -> same-shape tensor,
# or an (input, target) pair of them (the loss then compares the decoding of input with target).
BatchTransform = Callable[[torch.Tensor, torch.Generator], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


class Trainer:
    """One training run: optimiser, resume, steps, checkpoints, validation, hooks, log.

    Args:
        model: what is optimised and checkpointed (already on ``ctx.device``).
        forward: the module called in a step (``model`` wrapped by DDP / torch.compile, or itself).
        cfg: the run's settings (a dataclass with ``to_dict()``), stored in every checkpoint; a
            resume refuses other values of ``resume_keys``.
        ctx: rank, world size and device.
        out_dir: receives the checkpoint and ``training_log.csv``.
        schedule: the budget and cadences.
        optimizer: over ``model``'s parameters.
        fingerprints: tensors a resume must match (e.g. the training data).
        progress: ``(label, fraction, message)`` after every step (rank 0).
        on_epoch: called with each epoch's log row (rank 0).
        has_validation: whether ``validation_dice`` can be called.
        bf16: run ``self.autocast()`` regions in bfloat16.
    """

    stage = 0  # the log's ``stage`` column
    checkpoint_name: str | None = None  # None: ``stage{N}.pt``
    resume_keys: tuple[str, ...] = ()
    acc_size = 1  # length of ``self.acc``, the device sums of an epoch

    def __init__(
        self,
        model: nn.Module,
        forward: nn.Module,
        cfg: Any,
        ctx: DistContext,
        out_dir: Path,
        *,
        schedule: Schedule,
        optimizer: torch.optim.Optimizer,
        fingerprints: dict[str, torch.Tensor],
        progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
        has_validation: bool = False,
        bf16: bool = False,
    ) -> None:
        self.model, self.forward, self.cfg, self.ctx, self.out_dir = model, forward, cfg, ctx, Path(out_dir)
        self.schedule, self.optimizer, self.fingerprints = schedule, optimizer, fingerprints
        self.progress, self.on_epoch, self.has_validation, self.bf16 = progress, on_epoch, has_validation, bf16
        self.path = ckpt.checkpoint_path(self.out_dir, self.checkpoint_name or self.stage)
        self.autocast = (
            (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        )
        # Position: ``epoch`` epochs done, ``step`` batches of the current one done, ``steps_done`` in all.
        self.epoch, self.step, self.steps_done, self.history = 0, 0, 0, []
        self.acc = torch.zeros(self.acc_size, dtype=torch.float64, device=ctx.device)
        self.seconds0, self.t0, self.last_save, self.started = 0.0, time.perf_counter(), time.monotonic(), 0.0
        self.generators: dict[str, torch.Generator] = {}
        self._saved_generators: dict[str, torch.Tensor] = {}
        self.best: dict | None = None  # {"score", "epoch", "step", "bad", "model"} once validation ran
        self.stopped = False  # early stop (kept by a resume)
        self.out_of_time = False  # the time budget ended this run (a resume continues)
        self.in_step = False
        self._saved_at: tuple[int, int] | None = None

    # ---- what a subclass defines ------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> Sequence:
        """The batches of ``epoch`` (0-based), each passed to :meth:`train_step`; the same on a resume."""
        raise NotImplementedError

    def train_step(self, batch) -> None:
        """One optimiser step on ``batch``; adds the epoch's sums to ``self.acc`` (no host sync)."""
        raise NotImplementedError

    def epoch_row(self, sums: list[float]) -> dict:
        """The log row's numbers from the epoch's sums (summed over ranks)."""
        raise NotImplementedError

    def validation_dice(self) -> float:
        """The validation score (higher is better), in eval mode."""
        raise NotImplementedError

    def generator_streams(self) -> dict[str, tuple[int, torch.device | str]]:
        """{name: (stream, device)} of the generators seeded afresh every epoch (``self.generators``)."""
        return {}

    def config_dict(self) -> dict:
        """The settings stored in the checkpoint and checked on a resume."""
        return self.cfg.to_dict()

    def describe(self, row: dict) -> str:
        """A few numbers of an epoch's row for the progress message."""
        return f"loss {row['loss']:.3f}" if "loss" in row else ""

    def position(self) -> str:
        """Where the run is, for the progress message."""
        return f"epoch {self.epoch + 1}/{self.schedule.epochs}"

    @property
    def label(self) -> str:
        """The progress callback's first argument."""
        return f"train stage {self.stage}"

    # ---- hooks (override freely; called on every rank) ---------------------------------------
    def on_train_start(self) -> None:
        """Before the first epoch of this run (after a resume)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based)."""

    def on_validation(self, row: dict) -> None:
        """After a validation scored (``row["val_dice"]``) and the best weights were kept."""

    def on_epoch_end(self, row: dict) -> None:
        """After an epoch's row is logged (and validated), before its checkpoint."""
        if self.on_epoch is not None and self.ctx.is_main:
            self.on_epoch(row)

    def on_train_end(self) -> None:
        """After the last epoch: restore the best validated weights, if validation ran."""
        self.restore_best()

    def validation_weights(self) -> contextlib.AbstractContextManager:
        """The weights validation scores and the best keep (default: the model's own)."""
        return contextlib.nullcontext()

    def checkpoint_extras(self) -> dict:
        """More entries for the checkpoint (restored by :meth:`restore_extras`)."""
        return {}

    def restore_extras(self, rec: dict) -> None:
        """Take back what :meth:`checkpoint_extras` stored, from a resumed checkpoint ``rec``."""

    def restore_best(self) -> None:
        """Load the best validated weights into ``model`` (nothing without validation)."""
        if self.best is not None:
            self.model.load_state_dict(self.best["model"])

    # ---- the loop ---------------------------------------------------------------------------
    def finished(self) -> bool:
        s = self.schedule
        return self.stopped or self.out_of_time or self.epoch >= s.epochs or self.steps_done >= s.max_steps

    def run(self, resume: bool = False) -> list[dict]:
        """Train to the end of the schedule (or an early stop); returns the rows of this run's stage,
        resumed ones included. Ctrl-C / SIGTERM: checkpoint, then ``KeyboardInterrupt``."""
        if self.ctx.is_main:
            ckpt.remove_stale_temporaries(self.out_dir)
            if not resume:  # a fresh start: an older run's checkpoint must never be resumed later
                ckpt.remove_checkpoint(self.path)
        if resume:
            self._resume_state()
        self.started = time.monotonic()
        self.on_train_start()
        with ckpt.DeferredInterrupt() as interrupt:
            try:
                while not self.finished():
                    self._run_epoch(interrupt)
            except KeyboardInterrupt:
                if self.in_step:  # a hard (second) interrupt inside a step: the state is torn, keep the last checkpoint
                    raise
                if self._saved_at != (self.epoch, self.step):
                    self._save()
                raise
        if not self.path.exists():
            self._save()
        self._write_logs()
        self.on_train_end()
        return self.history

    def _start_epoch(self, epoch: int) -> None:
        self.generators = {
            name: torch.Generator(device).manual_seed(epoch_seed(self.schedule.seed, self.stage, epoch, stream))
            for name, (stream, device) in self.generator_streams().items()
        }
        if self.step == 0:
            self.acc.zero_()
            self.t0 = time.perf_counter()
        else:  # resumed mid-epoch
            for name, state in self._saved_generators.items():
                if name in self.generators:
                    self.generators[name].set_state(state)
            self.t0 = time.perf_counter() - self.seconds0

    def _run_epoch(self, interrupt: ckpt.DeferredInterrupt) -> None:
        e = self.epoch
        batches = self.epoch_batches(e)
        self._start_epoch(e)
        self.on_epoch_start(e)
        for b in range(self.step, len(batches)):
            self.in_step = True
            self.train_step(batches[b])
            self.step, self.steps_done, self.in_step = b + 1, self.steps_done + 1, False
            if self.progress is not None and self.ctx.is_main:
                self.progress(self.label, self._fraction(len(batches)), self._message())
            # agreed by all ranks under DDP: a rank that stopped alone would leave the others waiting
            stop, timed_out = self.ctx.any_rank(
                interrupt.requested, time.monotonic() - self.started >= self.schedule.max_seconds
            )
            if stop:
                raise KeyboardInterrupt
            if timed_out:
                self.out_of_time = True
                break
            if self.step < len(batches) and not self.ctx.distributed and self._time_due():
                self._save()
        self.in_step = True  # the epoch's bookkeeping is one unit for a hard interrupt
        row = {"stage": self.stage, "epoch": e + 1, **self.epoch_row(self._global_acc())}
        row.update(seconds=time.perf_counter() - self.t0, step=self.steps_done)  # the epoch's work is finished
        self.epoch, self.step = e + 1, 0
        self.acc.zero_()
        self._validate(row)
        self.history.append(row)
        self.in_step = False
        self._write_logs()
        self.on_epoch_end(row)
        every = self.schedule.checkpoint_every
        if (every > 0 and self.epoch % every == 0) or self.finished() or self._time_due():
            self._save()
        if self.ctx.any_rank(interrupt.requested)[0]:
            raise KeyboardInterrupt

    # ---- numbers ----------------------------------------------------------------------------
    def _global_acc(self) -> list[float]:
        """``self.acc`` summed over all ranks (one host read)."""
        acc = self.acc.clone()
        if self.ctx.distributed:
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
        return acc.tolist()

    def _fraction(self, n_batches: int) -> float:
        s = self.schedule
        parts = [self.steps_done / s.max_steps, (time.monotonic() - self.started) / s.max_seconds]
        if math.isfinite(s.epochs):
            parts.append((self.epoch + self.step / max(n_batches, 1)) / max(s.epochs, 1))
        return min(1.0, max(parts))

    def _message(self) -> str:
        done = self.describe(self.history[-1]) if self.history else "first epoch"
        return f"{self.position()} ({done})"

    def _validate(self, row: dict) -> None:
        """Score the validation set when due; keep the best weights; decide early stopping."""
        s = self.schedule
        if not self.has_validation or (self.epoch % s.val_every and not self.finished()):
            return
        with self.validation_weights():
            score = row["val_dice"] = float(self.validation_dice())
            better = self.best is None or score > self.best["score"]
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if better else None
        if better:
            self.best = {"score": score, "epoch": self.epoch, "step": self.steps_done, "bad": 0, "model": state}
        else:
            self.best["bad"] += 1
            if s.patience and self.best["bad"] >= s.patience:
                self.stopped = True
                row["early_stop"] = 1
        row["best_epoch"] = self.best["epoch"]
        self.on_validation(row)

    # ---- persistence ------------------------------------------------------------------------
    def _time_due(self) -> bool:
        """``checkpoint_minutes`` passed since the last checkpoint (agreed by all ranks under DDP)."""
        # a save has barriers: every rank must take the same decision
        return self.ctx.any_rank(time.monotonic() - self.last_save >= 60.0 * self.schedule.checkpoint_minutes)[0]

    def _save(self) -> None:
        """Checkpoint the current position (all ranks call it; rank 0 writes)."""
        self.ctx.barrier()
        acc = self._global_acc()
        random_states = ckpt.gather_random_states(self.ctx, self.generators if self.step > 0 else {})
        if self.ctx.is_main:
            state = {
                "stage": self.stage,
                "epoch": self.epoch,
                "step": self.step,
                "steps_done": self.steps_done,
                "accumulators": [float(a) for a in acc],
                "epoch_seconds": float(time.perf_counter() - self.t0) if self.step else 0.0,
                "history": self.history,
                "config": self.config_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                **ckpt.random_state_record(random_states),  # every rank's, by rank
                "fingerprints": {k: ckpt.data_fingerprint(v) for k, v in self.fingerprints.items()},
                "stopped": self.stopped,
            }
            if self.best is not None:
                state["best"] = dict(self.best)
            state.update(self.checkpoint_extras())
            ckpt.save_checkpoint(self.path, state)
        self.last_save, self._saved_at = time.monotonic(), (self.epoch, self.step)
        self.ctx.barrier()

    def replaced_stages(self) -> set[int]:
        """The log's stages whose rows this run's rows replace (default: its own)."""
        return {self.stage}

    def resume_defaults(self) -> dict:
        return type(self.cfg)().to_dict()  # what a checkpoint from before a setting existed was trained with

    def _check_resume(self, rec: dict) -> None:
        """Refuse a checkpoint of another stage, other settings (``resume_keys``) or other data."""
        if rec["stage"] != self.stage:
            raise SkullVAEError(f"this checkpoint is for stage {rec['stage']}, not stage {self.stage}", self.path)
        defaults, now = self.resume_defaults(), self.config_dict()
        for key in self.resume_keys:
            saved = rec["config"].get(key, defaults.get(key))
            if isinstance(saved, dict) and isinstance(defaults.get(key), dict):
                saved = {**defaults[key], **saved}  # settings added since the checkpoint: at their defaults
            if json.dumps(saved) != json.dumps(now[key]):  # tuples as lists
                message = f"the checkpoint was trained with {key}={saved}, not {now[key]}; use the same settings"
                raise SkullVAEError(message, self.path)
        for name, tensor in self.fingerprints.items():
            rtol = 1e-4 if name != "data" else 1e-6
            ckpt.check_fingerprint(rec["fingerprints"][name], tensor, self.path, rtol=rtol, what=name)

    def _resume_state(self) -> None:
        """Load the checkpoint after checking it belongs to this stage, settings and data."""
        rec = ckpt.load_checkpoint(self.path)
        self._check_resume(rec)
        self._saved_generators = ckpt.restore_random_state(rec, self.ctx, self.path)  # this rank's own
        self.model.load_state_dict(rec["model"])
        self.optimizer.load_state_dict(rec["optimizer"])
        self.epoch, self.step, self.history = rec["epoch"], rec["step"], list(rec["history"])
        self.steps_done = int(rec.get("steps_done", self.history[-1].get("step", 0) if self.history else 0))
        if self.ctx.is_main:  # the saved sums are global: rank 0 carries them, the others start at 0
            self.acc = torch.tensor(rec["accumulators"], dtype=torch.float64, device=self.ctx.device)
        self.seconds0 = rec["epoch_seconds"]
        if "best" in rec:
            best = rec["best"]
            self.best = {**best, "model": {k: v.to(self.ctx.device) for k, v in best["model"].items()}}
        self.stopped = bool(rec.get("stopped", False))
        self.restore_extras(rec)

    def _write_logs(self) -> None:
        if self.ctx.is_main:
            path = self.out_dir / LOG_NAME
            kept = [r for r in read_log(path) if r["stage"] not in self.replaced_stages()]  # other trainers' rows
            write_log(path, sorted(kept + self.history, key=lambda r: r["stage"]))
