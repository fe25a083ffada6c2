"""The two stages: β-VAE (stage 1) and the decoupled decoder (stage 2), on :class:`loop.Trainer`.

* Stage 1: ``vae_loss`` with the authors' scaling (80 · Σ_batch Dice + β · Σ_batch Σ_latent KLD),
  the Dice term times ``cfg.recon_scale`` (1 = the paper); β = 100 is the paper's stage 1,
  β = 1e-4 the regular-VAE baseline.
* Stage 2: the stage-1 encoder frozen (eval mode, no grads); μ and log σ² of every volume are
  computed ONCE (float32 heads), then a new decoder learns the Dice loss alone on z ~ q(z|x) drawn
  afresh each step (the paper) or on the fixed z = μ + σ (``stage2_latent="mu_plus_sigma"``, the
  authors' code); z stays float32 under any autocast. With a ``batch_transform`` the frozen encoder
  encodes each augmented batch instead.
* Adam; the whole data set ``(N, 1, X, Y, Z)`` is held in memory (on the GPU when it fits).
* DDP (torchrun): ``cfg.batch_size`` is the GLOBAL batch; each rank takes its contiguous share of
  every global batch of the same permutation and ε is drawn for the global batch, so samples and
  noise match a 1-process run; each rank's loss is multiplied by the world size before backward.
  BatchNorm: SyncBatchNorm on CUDA; on CPU (gloo) each rank normalises its own share, as a
  1-process run with ``micro_batches=world`` does (the DDP test checks that). A last global batch
  smaller than world × micro_batches is dropped. Augmentation is seeded per rank.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import torch
from torch import nn

from SkullVAELib.core.config import TrainConfig
from SkullVAELib.core.devices import training_bf16
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.training.distributed import DistContext, current_context
from SkullVAELib.training.loop import BatchTransform, EpochCallback, Trainer
from SkullVAELib.training.schedule import Schedule, epoch_seed
from SkullVAELib.vae.losses import kld_standard_normal, soft_dice_loss, vae_loss
from SkullVAELib.vae.networks import VAE, Decoder, Encoder, encode_dataset


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
    """What both VAE stages share on the loop: epochs of shuffled batches of the in-memory data set,
    ε per sample, micro-batches under DDP, the Dice/KLD sums and the log row, batch loading."""

    acc_size = 3  # Σ dice_b, Σ kld_b, samples (this rank)
    resume_keys = ("beta", "lr", "batch_size", "seed", "dice_weight", "stage2_latent", "recon_scale")

    def __init__(
        self,
        data: torch.Tensor,
        validation: torch.Tensor | None,
        *,
        model: nn.Module,
        cfg: TrainConfig,
        ctx: DistContext,
        latent_size: int,
        beta: float,
        micro_batches: int = 1,
        batch_transform: BatchTransform | None = None,
        **kw,
    ) -> None:
        if micro_batches < 1:
            raise SkullVAEError(f"micro_batches must be >= 1, got {micro_batches}")
        bf16 = training_bf16(cfg.precision, ctx.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True if cfg.fused_adam else None)
        super().__init__(
            model=model,
            cfg=cfg,
            ctx=ctx,
            schedule=Schedule.of(cfg),
            optimizer=optimizer,
            has_validation=validation is not None,
            bf16=bf16,
            **kw,
        )
        self.data, self.validation, self.n = data, validation, data.shape[0]
        self.latent_size, self.beta, self.micro_batches = latent_size, beta, micro_batches
        self.batch_transform = batch_transform

    def replaced_stages(self) -> set[int]:
        """This VAE stage and the later one (retraining stage 1 invalidates stage 2); never the
        refiner's or the residual's rows (stages 3, 4)."""
        return {s for s in (1, 2) if s >= self.stage}

    def generator_streams(self) -> dict:
        streams = {"noise": (1, self.ctx.device)}
        if self.batch_transform is not None:
            streams["augment"] = (2 + self.ctx.rank, self.ctx.device)
        return streams

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The global batches of a seeded permutation (a last batch too small for every rank is dropped)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, self.stage, epoch, 0))
        need = self.ctx.world_size * self.micro_batches
        batches = [b for b in torch.randperm(self.n, generator=gen).split(self.cfg.batch_size) if len(b) >= need]
        if not batches:
            raise SkullVAEError(f"{self.n} volumes cannot fill one batch over {need} ranks x micro-batches")
        return batches

    def compute_loss(self, idx: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict:
        """Loss terms of the samples ``idx`` (CPU indices) with noise ``eps`` (on the device)."""
        raise NotImplementedError

    def train_step(self, idx: torch.Tensor) -> None:
        """One optimiser step on the global batch ``idx`` (this rank's share, in micro-batches); no host sync."""
        ctx = self.ctx
        eps = torch.randn((len(idx), self.latent_size), generator=self.generators["noise"], device=ctx.device)
        positions = ctx.shard(torch.arange(len(idx)))
        chunks = torch.tensor_split(positions, self.micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for k, pos in enumerate(chunks):
            sync = k == len(chunks) - 1 or not ctx.distributed
            with contextlib.nullcontext() if sync else self.forward.no_sync():
                terms = self.compute_loss(idx[pos], eps[pos.to(ctx.device)], self.generators.get("augment"))
                (terms["loss"] * ctx.world_size).backward()
            self.acc[0] += terms["dice_per_sample"].detach().sum()
            self.acc[1] += terms["kld_per_sample"].detach().sum()
            self.acc[2] += len(pos)
        self.optimizer.step()

    def epoch_row(self, sums: list[float]) -> dict:
        """Epoch summary on the authors' per-batch scale (see ``training.log``)."""
        dice_sum, kld_sum, n = sums
        cfg, beta = self.cfg, self.beta
        dice_b, kld_b = dice_sum / max(n, 1), kld_sum / max(n, 1)
        dice, kld = cfg.dice_weight * cfg.batch_size * dice_b, cfg.batch_size * kld_b
        scale = cfg.recon_scale if self.stage == 1 else 1.0
        row = {"beta": float(beta), "dice": dice, "kld": kld, "beta_kld": beta * kld}
        row.update(loss=scale * dice + beta * kld, dice_score=1.0 - dice_b, kld_per_dim=kld_b / self.latent_size)
        return {**row, "samples": int(n)}

    def describe(self, row: dict) -> str:
        return f"dice {row['dice']:.2f} kld {row['kld']:.2f}"

    def load_pair(
        self, idx: torch.Tensor, generator: torch.Generator | None = None, source: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target): volumes ``idx`` of ``source`` (default: the training data) as float32 on the
        device, augmented; the target differs only when ``batch_transform`` returns a pair (``augment``:
        a freshly cut defective input, the skull before the cut as the target)."""
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
            yield idx, self.load_pair(idx, source=self.validation)[0]


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
    resume_keys = tuple(k for k in _StageTrainer.resume_keys if k != "beta")  # stage 2 has no β

    def __init__(self, encoder: Encoder, **kw) -> None:
        super().__init__(**kw)
        self.encoder = encoder
        self.fixed = self.cfg.stage2_latent == "mu_plus_sigma"
        self.mu_all, self.logvar_all = encode_dataset(
            encoder, self.data, self.cfg.batch_size, self.ctx.device, self.bf16
        )
        self.std_all = torch.exp(0.5 * self.logvar_all)
        self.kld_all = kld_standard_normal(self.mu_all, self.logvar_all)
        self.z_val = None  # the code completion decodes (``ModelBundle.latent_code``): μ + σ when fixed, else μ
        if self.validation is not None:
            mu, logvar = encode_dataset(encoder, self.validation, self.cfg.batch_size, self.ctx.device, self.bf16)
            self.z_val = mu + torch.exp(0.5 * logvar) if self.fixed else mu

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
                prob = self.model(self.z_val[idx.to(self.ctx.device)])
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
        batch_transform: ``f(x, generator) -> x'`` or ``(input, target)``: the augmentation of every training
            batch ``(B, 1, X, Y, Z)`` float32 on the device; ``generator`` seeded per (seed, stage, epoch, rank).
        validation: optional ``(M, 1, X, Y, Z)`` volumes: reconstruction Dice (z = μ) every ``cfg.val_every``
            epochs, best weights kept, early stop after ``cfg.patience`` evaluations without improvement.

    Returns:
        the per-epoch rows of this stage (``training.log``'s columns), resumed epochs included.
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
    decodes the validation volumes' code as completion does: μ, or μ + σ with ``mu_plus_sigma``. Other arguments as :func:`train_stage1`; the checkpoint
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
