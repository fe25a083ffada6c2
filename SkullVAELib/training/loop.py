"""The epoch loop shared by both stages, split the way nnU-Net's trainer is.

:class:`Trainer` owns the optimisation state of one stage and the order of events:

``run`` → ``_resume_state`` (if resuming) → ``on_train_start`` → per epoch: ``on_epoch_start`` →
``_train_step`` per batch → epoch row → validation (``_validate``) → ``on_epoch_end`` → ``_save``
when due → ``on_train_end``. Subclasses (``stages.py``) say what a batch is and what its loss is
(``compute_loss``), and how to score the validation set (``validation_dice``).

* Randomness: each epoch draws its permutation, its ε and its augmentation randomness from
  generators seeded with (seed, stage, epoch, stream), so runs are reproducible and a resume
  continues exactly, even from a mid-epoch checkpoint (which stores the generators' states).
* Host-sync free steps: per-step loss sums accumulate in a device tensor; the host reads it
  once per epoch (and at a checkpoint). Progress messages carry the last epoch's numbers.
* Checkpoints: every ``cfg.checkpoint_every`` epochs (default 1; 0 = by wall time only) and
  mid-epoch at a step boundary whenever ``cfg.checkpoint_minutes`` have passed since the last.
  Ctrl-C or SIGTERM: the step finishes, a checkpoint is written, ``KeyboardInterrupt`` is raised.
* Validation (optional): every ``cfg.val_every`` epochs; the best weights are kept and restored at
  the end; ``cfg.patience`` > 0 stops after that many evaluations without improvement.
* DDP: see ``stages.py``; every rank runs this loop in lock-step; rank 0 logs and saves.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from SkullVAELib.core.config import TrainConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.training.distributed import DistContext
from SkullVAELib.training.log import LOG_NAME, read_log, write_log

EpochCallback = Callable[[dict], None]
# (x (B, 1, X, Y, Z) float32 on the training device, generator on that device) -> same-shape tensor,
# or an (input, target) pair of them (the loss then compares the decoding of input with target).
BatchTransform = Callable[[torch.Tensor, torch.Generator], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]
_RESUME_KEYS = ("beta", "batch_size", "seed", "dice_weight", "stage2_latent", "recon_scale")


def epoch_seed(seed: int, stage: int, epoch: int, stream: int) -> int:
    """Independent 63-bit seed per (seed, stage, epoch, stream): 0 shuffle, 1 ε, 2 + rank augmentation."""
    return int(np.random.SeedSequence([seed, stage, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


class Trainer:
    """One training stage: optimiser, resume, steps, checkpoints, validation, epoch hooks.

    Args:
        model: what is optimised and checkpointed (already on ``ctx.device``).
        forward: the module called in the step (``model`` wrapped by DDP / torch.compile, or itself).
        cfg: the stage's ``TrainConfig``.
        ctx: rank, world size and device.
        out_dir: receives ``checkpoints/stage{N}.pt`` and ``training_log.csv``.
        n: number of training volumes; latent_size: d; beta: β of the log rows.
        fingerprints: tensors a resume must match (``data``, and stage 2's ``latents``).
        progress: ``(stage, fraction, message)`` after every step (rank 0).
        on_epoch: called with each epoch's log row (rank 0).
        micro_batches: gradient-accumulation chunks per (per-rank) batch.
        batch_transform: optional augmentation of each training batch on the device (see ``BatchTransform``).
        has_validation: whether ``validation_dice`` can be called.
    """

    stage = 0

    def __init__(
        self,
        model: nn.Module,
        forward: nn.Module,
        cfg: TrainConfig,
        ctx: DistContext,
        out_dir: Path,
        *,
        n: int,
        latent_size: int,
        beta: float,
        fingerprints: dict[str, torch.Tensor],
        progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
        micro_batches: int = 1,
        batch_transform: BatchTransform | None = None,
        has_validation: bool = False,
    ) -> None:
        if micro_batches < 1:
            raise SkullVAEError(f"micro_batches must be >= 1, got {micro_batches}")
        self.model, self.forward, self.cfg, self.ctx, self.out_dir = model, forward, cfg, ctx, Path(out_dir)
        self.n, self.latent_size, self.beta, self.fingerprints = n, latent_size, beta, fingerprints
        self.progress, self.on_epoch, self.micro_batches = progress, on_epoch, micro_batches
        self.batch_transform, self.has_validation = batch_transform, has_validation
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True if cfg.fused_adam else None)
        self.path = ckpt.checkpoint_path(self.out_dir, self.stage)
        use_bf16 = (cfg.amp and ctx.device.type == "cuda") or (cfg.cpu_bf16 and ctx.device.type == "cpu")
        self.autocast = (
            (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        )
        # Position: ``epoch`` epochs done, ``step`` batches of the current one done.
        self.epoch, self.step, self.history = 0, 0, []
        self.acc = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # Σ dice_b, Σ kld_b, samples (this rank)
        self.seconds0, self.t0, self.last_save = 0.0, time.perf_counter(), time.monotonic()
        self.noise: torch.Generator | None = None
        self.augment: torch.Generator | None = None
        self._saved_generators: dict[str, torch.Tensor] = {}
        self.best: dict | None = None  # {"score", "epoch", "bad", "model"} once validation ran
        self.stopped = False
        self.in_step = False
        self._saved_at: tuple[int, int] | None = None

    # ---- what a stage defines -------------------------------------------------------------
    def compute_loss(self, idx: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict:
        """Loss terms of the samples ``idx`` (CPU indices) with noise ``eps`` (on the device)."""
        raise NotImplementedError

    def validation_dice(self) -> float:
        """Mean reconstruction soft Dice of the validation volumes (eval mode, z = μ)."""
        raise NotImplementedError

    # ---- epoch hooks (override freely; called on every rank) --------------------------------
    def on_train_start(self) -> None:
        """Before the first epoch of this run (after a resume)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based)."""

    def on_epoch_end(self, row: dict) -> None:
        """After an epoch's row is logged (and validated), before its checkpoint."""
        if self.on_epoch is not None and self.ctx.is_main:
            self.on_epoch(row)

    def on_train_end(self) -> None:
        """After the last epoch: restore the best validated weights, if validation ran."""
        if self.best is not None:
            self.model.load_state_dict(self.best["model"])

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> list[dict]:
        """Train to ``cfg.epochs`` (or an early stop); returns this stage's log rows, resumed ones included."""
        if self.ctx.is_main:
            ckpt.remove_stale_temporaries(self.out_dir)
        if resume:
            self._resume_state()
        self.on_train_start()
        with ckpt.DeferredInterrupt() as interrupt:
            try:
                while self.epoch < self.cfg.epochs and not self.stopped:
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

    def _run_epoch(self, interrupt: ckpt.DeferredInterrupt) -> None:
        cfg, ctx, e = self.cfg, self.ctx, self.epoch
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, self.stage, e, 0)))
        need = ctx.world_size * self.micro_batches
        batches = [b for b in perm.split(cfg.batch_size) if len(b) >= need]
        if not batches:
            raise SkullVAEError(f"{self.n} volumes cannot fill one batch over {need} ranks x micro-batches")
        self.noise = torch.Generator(ctx.device).manual_seed(epoch_seed(cfg.seed, self.stage, e, 1))
        self.augment = None
        if self.batch_transform is not None:
            self.augment = torch.Generator(ctx.device).manual_seed(epoch_seed(cfg.seed, self.stage, e, 2 + ctx.rank))
        if self.step == 0:
            self.acc.zero_()
            self.t0 = time.perf_counter()
        else:  # resumed mid-epoch
            self.noise.set_state(self._saved_generators["noise"])
            if self.augment is not None and "augment" in self._saved_generators:
                self.augment.set_state(self._saved_generators["augment"])
            self.t0 = time.perf_counter() - self.seconds0
        self.on_epoch_start(e)
        for b in range(self.step, len(batches)):
            idx = batches[b]
            eps = torch.randn((len(idx), self.latent_size), generator=self.noise, device=ctx.device)
            self.in_step = True
            self._train_step(idx, eps)
            self.step, self.in_step = b + 1, False
            if self.progress is not None and ctx.is_main:
                self.progress(f"train stage {self.stage}", (e + self.step / len(batches)) / cfg.epochs, self._message())
            if interrupt.requested:
                raise KeyboardInterrupt
            if self.step < len(batches) and not ctx.distributed and self._time_due():
                self._save()
        self.in_step = True  # the epoch's bookkeeping is one unit for a hard interrupt
        row = self._row()  # reads the device sums: the epoch's work is finished when the clock stops
        row["seconds"] = time.perf_counter() - self.t0
        self.epoch, self.step = e + 1, 0
        self.acc.zero_()
        self._validate(row)
        self.history.append(row)
        self.in_step = False
        self._write_logs()
        self.on_epoch_end(row)
        every = cfg.checkpoint_every
        due = (every > 0 and self.epoch % every == 0) or self.epoch == cfg.epochs or self.stopped
        if due or self._time_due():
            self._save()
        if interrupt.requested:
            raise KeyboardInterrupt

    def _train_step(self, idx: torch.Tensor, eps: torch.Tensor) -> None:
        """One optimiser step on the global batch ``idx`` (this rank's share, in micro-batches); no host sync."""
        ctx = self.ctx
        positions = ctx.shard(torch.arange(len(idx)))
        chunks = torch.tensor_split(positions, self.micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for k, pos in enumerate(chunks):
            sync = k == len(chunks) - 1 or not ctx.distributed
            with contextlib.nullcontext() if sync else self.forward.no_sync():
                terms = self.compute_loss(idx[pos], eps[pos.to(ctx.device)], self.augment)
                (terms["loss"] * ctx.world_size).backward()
            self.acc[0] += terms["dice_per_sample"].detach().sum()
            self.acc[1] += terms["kld_per_sample"].detach().sum()
            self.acc[2] += len(pos)
        self.optimizer.step()

    # ---- numbers ----------------------------------------------------------------------------
    def _global_acc(self) -> list[float]:
        """Σ dice_b, Σ kld_b, samples over all ranks (one host read)."""
        acc = self.acc.clone()
        if self.ctx.distributed:
            dist.all_reduce(acc, op=dist.ReduceOp.SUM)
        return acc.tolist()

    def _row(self) -> dict:
        """Epoch summary on the authors' per-batch scale (see ``training_log``)."""
        dice_sum, kld_sum, n = self._global_acc()
        cfg, beta = self.cfg, self.beta
        dice_b, kld_b = dice_sum / max(n, 1), kld_sum / max(n, 1)
        dice, kld = cfg.dice_weight * cfg.batch_size * dice_b, cfg.batch_size * kld_b
        scale = cfg.recon_scale if self.stage == 1 else 1.0
        row = {"stage": self.stage, "epoch": self.epoch + 1, "beta": float(beta), "dice": dice, "kld": kld}
        row.update(beta_kld=beta * kld, loss=scale * dice + beta * kld, dice_score=1.0 - dice_b)
        row.update(kld_per_dim=kld_b / self.latent_size, seconds=0.0, samples=int(n))
        return row

    def _message(self) -> str:
        last = self.history[-1] if self.history else None
        done = f"dice {last['dice']:.2f} kld {last['kld']:.2f}" if last else "first epoch"
        return f"epoch {self.epoch + 1}/{self.cfg.epochs} ({done})"

    def _validate(self, row: dict) -> None:
        """Score the validation set when due; keep the best weights; decide early stopping."""
        cfg = self.cfg
        if not self.has_validation or (self.epoch % cfg.val_every and self.epoch != cfg.epochs):
            return
        score = float(self.validation_dice())
        row["val_dice"] = score
        if self.best is None or score > self.best["score"]:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best = {"score": score, "epoch": self.epoch, "bad": 0, "model": state}
        else:
            self.best["bad"] += 1
            if cfg.patience and self.best["bad"] >= cfg.patience:
                self.stopped = True
                row["early_stop"] = 1
        row["best_epoch"] = self.best["epoch"]

    # ---- persistence ------------------------------------------------------------------------
    def _time_due(self) -> bool:
        """``cfg.checkpoint_minutes`` passed since the last checkpoint (agreed by all ranks under DDP)."""
        due = time.monotonic() - self.last_save >= 60.0 * self.cfg.checkpoint_minutes
        if self.ctx.distributed:  # a save has barriers: every rank must take the same decision
            flag = torch.tensor([float(due)], device=self.ctx.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def _save(self) -> None:
        """Checkpoint the current position (all ranks call it; rank 0 writes)."""
        self.ctx.barrier()
        acc = self._global_acc()
        if self.ctx.is_main:
            state = {
                "stage": self.stage,
                "epoch": self.epoch,
                "step": self.step,
                "accumulators": [float(a) for a in acc],
                "epoch_seconds": float(time.perf_counter() - self.t0) if self.step else 0.0,
                "history": self.history,
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": ckpt.capture_rng_state(),
                "fingerprints": {k: ckpt.data_fingerprint(v) for k, v in self.fingerprints.items()},
                "stopped": self.stopped,
            }
            if self.step > 0 and self.noise is not None:
                state["noise_state"] = self.noise.get_state()
                if self.augment is not None:
                    state["augment_state"] = self.augment.get_state()
            if self.best is not None:
                state["best"] = dict(self.best)
            ckpt.save_checkpoint(self.path, state)
        self.last_save, self._saved_at = time.monotonic(), (self.epoch, self.step)
        self.ctx.barrier()

    def _resume_state(self) -> None:
        """Load ``checkpoints/stage{N}.pt`` after checking it belongs to this stage, config and data."""
        rec = ckpt.load_checkpoint(self.path)
        if rec["stage"] != self.stage:
            raise SkullVAEError(f"this checkpoint is for stage {rec['stage']}, not stage {self.stage}", self.path)
        defaults = TrainConfig().to_dict()
        for key in _RESUME_KEYS:
            if key == "beta" and self.stage == 2:
                continue
            saved, now = rec["config"].get(key, defaults[key]), self.cfg.to_dict()[key]
            if saved != now:
                raise SkullVAEError(
                    f"the checkpoint was trained with {key}={saved}, not {now}; resume with the same settings",
                    self.path,
                )
        for name, tensor in self.fingerprints.items():
            rtol = 1e-4 if name != "data" else 1e-6
            ckpt.check_fingerprint(rec["fingerprints"][name], tensor, self.path, rtol=rtol, what=name)
        self.model.load_state_dict(rec["model"])
        self.optimizer.load_state_dict(rec["optimizer"])
        ckpt.restore_rng_state(rec["rng"])
        self.epoch, self.step, self.history = rec["epoch"], rec["step"], list(rec["history"])
        if self.ctx.is_main:  # the saved sums are global: rank 0 carries them, the others start at 0
            self.acc = torch.tensor(rec["accumulators"], dtype=torch.float64, device=self.ctx.device)
        self.seconds0 = rec["epoch_seconds"]
        for name in ("noise", "augment"):
            if f"{name}_state" in rec:
                self._saved_generators[name] = rec[f"{name}_state"]
        if "best" in rec:
            best = rec["best"]
            self.best = {**best, "model": {k: v.to(self.ctx.device) for k, v in best["model"].items()}}
        self.stopped = bool(rec.get("stopped", False))

    def _write_logs(self) -> None:
        if self.ctx.is_main:
            path = self.out_dir / LOG_NAME
            kept = [r for r in read_log(path) if r["stage"] < self.stage]
            write_log(path, kept + self.history)
