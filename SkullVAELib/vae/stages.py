"""The two stages: β-VAE (stage 1) and the decoupled decoder (stage 2), on :class:`loop.Trainer`.

* Stage 1: ``vae_loss`` with the authors' scaling (80 · Σ_batch Dice + β · Σ_batch Σ_latent KLD),
  the Dice term times ``cfg.recon_scale`` (1 = the paper); β = 100 is the paper's stage 1,
  β = 1e-4 the regular-VAE baseline.
* Stage 2: the stage-1 encoder frozen (eval mode, no grads); μ and log σ² of every volume are
  computed ONCE (float32 heads), then a new decoder learns the Dice loss alone on z ~ q(z|x) drawn
  afresh each step (the paper) or on the fixed z = μ + σ (``stage2_latent="mu_plus_sigma"``, the
  authors' code). z and the decoder's first layer stay float32 under any autocast
  (``networks.full_precision``). With a ``batch_transform`` the frozen encoder encodes each
  augmented batch instead.
* Adam; the whole data set ``(N, 1, X, Y, Z)`` is held in memory (on the GPU when it fits).
* Multi-process (torchrun / DDP): ``cfg.batch_size`` is the GLOBAL batch; each rank takes its
  contiguous share of every global batch of the same permutation (``distributed.DistContext.shard``)
  and ε is drawn for the global batch, so the samples and noise match a 1-process run. Each
  rank's loss is multiplied by the world size before backward, so DDP's gradient average equals
  the 1-process gradient of the batch sum. BatchNorm: on CUDA with world > 1 the model is converted
  to SyncBatchNorm (same statistics as 1 process); SyncBatchNorm is GPU-only in torch, so on CPU
  (gloo) each rank normalises over its own share - exactly what a 1-process run with
  ``micro_batches=world`` (gradient accumulation, BN per micro-batch) does; the DDP test checks that.
  A last global batch smaller than world × micro_batches is dropped (BN needs samples on every rank).
  Augmentation randomness is seeded per rank, so augmented DDP runs are reproducible but differ
  from 1-process runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch
from torch import nn

from SkullVAELib.core.config import TrainConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.training.distributed import DistContext, current_context
from SkullVAELib.training.loop import BatchTransform, EpochCallback, Trainer
from SkullVAELib.vae.losses import kld_standard_normal, soft_dice_loss, vae_loss
from SkullVAELib.vae.networks import VAE, Decoder, Encoder


class _Stage1Forward(nn.Module):
    """VAE forward with externally drawn ε (so DDP shards see the same noise as 1 process)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encoder(x)  # float32 heads
        z = mu.float() + eps * torch.exp(0.5 * logvar.float())
        return self.vae.decoder(z), mu, logvar


def _check_data(data: torch.Tensor, what: str = "training") -> None:
    if data.ndim != 5 or data.shape[1] != 1:
        raise SkullVAEError(f"{what} data must be a (N, 1, X, Y, Z) tensor, got shape {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise SkullVAEError(f"no {what} volumes")


def _place_data(data: torch.Tensor, device: torch.device, what: str = "training") -> torch.Tensor:
    """The whole data set on ``device`` if it fits in half the free GPU memory, else on (pinned) CPU."""
    _check_data(data, what)
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.numel() * data.element_size() < 0.5 * free:
        return data.to(device)
    return data.pin_memory()


def _wrap(module: nn.Module, ctx: DistContext, cfg: TrainConfig) -> nn.Module:
    """DDP for world > 1, then torch.compile if asked."""
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if cfg.compile:
        module = torch.compile(module)
    return module


def _prepare(model: nn.Module, ctx: DistContext, cfg: TrainConfig) -> nn.Module:
    """The module actually trained: on the device, SyncBatchNorm under multi-GPU DDP, channels-last if asked."""
    train_model = model
    if ctx.distributed and ctx.device.type == "cuda":
        train_model = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    train_model.to(ctx.device)
    if cfg.channels_last:
        train_model.to(memory_format=torch.channels_last_3d)
    return train_model


class _StageTrainer(Trainer):
    """Batch loading shared by both stages: float32 on the device, channels-last, augmentation."""

    def __init__(self, data: torch.Tensor, validation: torch.Tensor | None, **kw) -> None:
        super().__init__(has_validation=validation is not None, **kw)
        self.data = data
        self.validation = validation

    def load(self, idx: torch.Tensor, generator: torch.Generator | None = None, source: torch.Tensor | None = None):
        """Volumes ``idx`` of ``source`` (default: the training data) as float32 on the device, augmented."""
        return self.load_pair(idx, generator, source)[0]

    def load_pair(
        self, idx: torch.Tensor, generator: torch.Generator | None = None, source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of :meth:`load`: the target differs only when ``batch_transform`` returns a pair
        (e.g. ``augment``: a freshly cut defective input, the skull before the cut as the target)."""
        source = self.data if source is None else source
        x = source[idx.to(source.device)].to(self.ctx.device, torch.float32, non_blocking=True)
        target = x
        if generator is not None and self.batch_transform is not None:
            x = self.batch_transform(x, generator)
            x, target = x if isinstance(x, tuple) else (x, x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
            target = target if target is x else target.contiguous(memory_format=torch.channels_last_3d)
        return x, target

    def _val_batches(self):
        for start in range(0, self.validation.shape[0], self.cfg.batch_size):
            idx = torch.arange(start, min(start + self.cfg.batch_size, self.validation.shape[0]))
            yield idx, self.load(idx, source=self.validation)


class Stage1Trainer(_StageTrainer):
    """β-VAE: encoder + decoder, ``vae_loss`` with ``cfg.recon_scale``."""

    stage = 1

    def compute_loss(self, idx: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict:
        x, target = self.load_pair(idx, generator)
        with self.autocast():
            prob, mu, logvar = self.forward(x, eps)
        return vae_loss(prob, target, mu, logvar, self.beta, self.cfg.dice_weight, self.cfg.recon_scale)

    @torch.no_grad()
    def validation_dice(self) -> float:
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for _, x in self._val_batches():
            with self.autocast():
                mu, _ = self.model.encoder(x)
                prob = self.model.decoder(mu)
            total += (1.0 - soft_dice_loss(prob, x)).sum()
        self.model.train()
        return float(total) / self.validation.shape[0]


class Stage2Trainer(_StageTrainer):
    """Decoupled decoder on the frozen encoder's latents (fixed, or re-encoded per augmented batch)."""

    stage = 2

    def __init__(self, encoder: Encoder, **kw) -> None:
        super().__init__(**kw)
        self.encoder = encoder
        self.fixed = self.cfg.stage2_latent == "mu_plus_sigma"
        self.mu_all, self.logvar_all = encode_dataset(
            encoder, self.data, self.cfg.batch_size, self.ctx.device, self.cfg.amp
        )
        self.std_all = torch.exp(0.5 * self.logvar_all)
        self.kld_all = kld_standard_normal(self.mu_all, self.logvar_all)
        self.mu_val = None
        if self.validation is not None:
            self.mu_val, _ = encode_dataset(
                encoder, self.validation, self.cfg.batch_size, self.ctx.device, self.cfg.amp
            )

    def compute_loss(self, idx: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict:
        i = idx.to(self.ctx.device)
        x, target = self.load_pair(idx, generator)
        if self.batch_transform is not None:  # the augmented batch's own posterior
            with torch.no_grad(), self.autocast():
                mu, logvar = self.encoder(x)
            std, kld = torch.exp(0.5 * logvar), kld_standard_normal(mu, logvar)
        else:
            mu, std, kld = self.mu_all[i], self.std_all[i], self.kld_all[i]
        z = mu + (std if self.fixed else eps * std)  # float32; the decoder's first layer keeps it so
        with self.autocast():
            prob = self.forward(z)
        dice_b = soft_dice_loss(prob, target)
        return {"loss": self.cfg.dice_weight * dice_b.sum(), "dice_per_sample": dice_b, "kld_per_sample": kld}

    @torch.no_grad()
    def validation_dice(self) -> float:
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        for idx, x in self._val_batches():
            with self.autocast():
                prob = self.model(self.mu_val[idx.to(self.ctx.device)])
            total += (1.0 - soft_dice_loss(prob, x)).sum()
        self.model.train()
        return float(total) / self.validation.shape[0]


def train_stage1(
    vae: VAE,
    data: torch.Tensor,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    micro_batches: int = 1,
    batch_transform: BatchTransform | None = None,
    validation: torch.Tensor | None = None,
) -> list[dict]:
    """Train the β-VAE in place (β = ``cfg.beta``; 1e-4 gives the regular-VAE baseline).

    Args:
        vae: the model, trained in place (left in eval mode, on ``cfg.device``).
        data: ``(N, 1, X, Y, Z)`` soft occupancy in [0, 1] (float16/32) on the model grid.
        cfg: ``TrainConfig`` (epochs, batch = global batch, lr, β, recon_scale, seed, checkpoints, amp, ...).
        out_dir: receives ``checkpoints/stage1.pt`` and ``training_log.csv`` (no figure: the
            workflow draws ``curves.png`` from the log).
        resume: continue from ``checkpoints/stage1.pt`` exactly.
        progress: ``(stage, fraction, message)`` after every step (rank 0).
        on_epoch: called with each epoch's log row (rank 0).
        micro_batches: split each (per-rank) batch into this many gradient-accumulation chunks.
        batch_transform: ``f(x, generator) -> x'`` applied to every training batch ``(B, 1, X, Y, Z)``
            float32 on the training device (augmentation), before the forward pass; input and target
            are both the transformed batch, unless it returns an ``(input, target)`` pair.
            ``generator`` is seeded per (seed, stage, epoch, rank).
        validation: optional ``(M, 1, X, Y, Z)`` volumes: reconstruction Dice (z = μ) every
            ``cfg.val_every`` epochs, best weights kept, early stop after ``cfg.patience`` evaluations
            without improvement (logged as ``val_dice``, ``best_epoch``, ``early_stop``).

    Returns:
        the per-epoch rows of this stage (see ``training_log`` for the keys), resumed epochs included.
    """
    ctx = current_context(cfg.device)
    model = _prepare(vae, ctx, cfg)
    model.train()
    trainer = Stage1Trainer(
        data=_place_data(data, ctx.device),
        validation=None if validation is None else _place_data(validation, ctx.device, "validation"),
        model=model,
        forward=_wrap(_Stage1Forward(model), ctx, cfg),
        cfg=cfg,
        ctx=ctx,
        out_dir=Path(out_dir),
        n=data.shape[0],
        latent_size=vae.cfg.latent_size,
        beta=cfg.beta,
        fingerprints={"data": data},
        progress=progress,
        on_epoch=on_epoch,
        micro_batches=micro_batches,
        batch_transform=batch_transform,
    )
    history = trainer.run(resume)
    if model is not vae:
        vae.load_state_dict(model.state_dict())
    vae.to(ctx.device).eval()
    return history


@torch.no_grad()
def encode_dataset(
    encoder: Encoder, data: torch.Tensor, batch_size: int = 4, device: str | torch.device = "cpu", amp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ, log σ² ``(N, d)`` float32 of every volume with the encoder in eval mode (BN running stats).

    On CUDA with ``amp`` the conv blocks run in bf16; the μ/log σ² heads are float32 regardless.
    """
    device = torch.device(device)
    encoder.to(device).eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else contextlib.nullcontext()
    )
    mus, logvars = [], []
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size].to(device, torch.float32)
        with autocast:
            mu, logvar = encoder(x)
        mus.append(mu.float())
        logvars.append(logvar.float())
    return torch.cat(mus), torch.cat(logvars)


def train_stage2(
    encoder: Encoder,
    decoder: Decoder,
    data: torch.Tensor,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    micro_batches: int = 1,
    batch_transform: BatchTransform | None = None,
    validation: torch.Tensor | None = None,
) -> list[dict]:
    """Train a NEW decoder on the frozen stage-1 encoder's latents with the Dice loss only.

    ``cfg.stage2_latent``: ``"sample"`` (z = μ + ε·σ, ε fresh every step: the paper) or
    ``"mu_plus_sigma"`` (z = μ + σ, fixed: the authors' code), float32 whatever the autocast.
    μ, log σ² are computed once (per augmented batch with ``batch_transform``). ``cfg.beta`` and
    ``cfg.recon_scale`` are ignored (the KLD is logged for information, β·KLD = 0). Validation
    decodes the validation volumes' μ. Other arguments as :func:`train_stage1`; the checkpoint
    is ``checkpoints/stage2.pt``.
    """
    ctx = current_context(cfg.device)
    for p in encoder.parameters():
        p.requires_grad_(False)
    model = _prepare(decoder, ctx, cfg)
    model.train()
    on_device = _place_data(data, ctx.device)
    trainer = Stage2Trainer(
        encoder=encoder,
        data=on_device,
        validation=None if validation is None else _place_data(validation, ctx.device, "validation"),
        model=model,
        forward=_wrap(model, ctx, cfg),
        cfg=cfg,
        ctx=ctx,
        out_dir=Path(out_dir),
        n=data.shape[0],
        latent_size=encoder.cfg.latent_size,
        beta=0.0,
        fingerprints={"data": data},
        progress=progress,
        on_epoch=on_epoch,
        micro_batches=micro_batches,
        batch_transform=batch_transform,
    )
    trainer.fingerprints["latents"] = trainer.mu_all.cpu()
    history = trainer.run(resume)
    if model is not decoder:
        decoder.load_state_dict(model.state_dict())
    decoder.to(ctx.device).eval()
    return history
