"""The two-stage trainer: β-VAE (stage 1) and the decoupled decoder (stage 2). Knows tensors, not files.

* Stage 1: ``vae_loss`` with the authors' scaling (80 · Σ_batch Dice + β · Σ_batch Σ_latent KLD);
  β = 100 is the paper's stage 1, β = 1e-4 the regular-VAE baseline.
* Stage 2: the stage-1 encoder frozen (eval mode, no grads); μ and log σ² of every volume are
  computed ONCE, then a new decoder learns the Dice loss alone on z ~ q(z|x) drawn afresh each
  step (the paper) or on the fixed z = μ + σ (``stage2_latent="mu_plus_sigma"``, the authors' code).
* Adam; the whole data set ``(N, 1, X, Y, Z)`` is held in memory (on the GPU when it fits).
* Randomness: every epoch draws its permutation and its ε from generators seeded with
  (seed, stage, epoch), so runs are reproducible on CPU and ``resume`` continues exactly,
  even from a mid-epoch Ctrl-C checkpoint (which also stores the ε generator's state).
* Multi-process (torchrun / DDP): ``cfg.batch_size`` is the GLOBAL batch; each rank takes its
  contiguous share of every global batch of the same permutation (``distributed.DistContext.shard``)
  and ε is drawn for the global batch, so the samples and noise match a 1-process run. Each
  rank's loss is multiplied by the world size before backward, so DDP's gradient average equals
  the 1-process gradient of the batch sum. BatchNorm: on CUDA with world > 1 the model is converted
  to SyncBatchNorm (same statistics as 1 process); SyncBatchNorm is GPU-only in torch, so on CPU
  (gloo) each rank normalises over its own share - exactly what a 1-process run with
  ``micro_batches=world`` (gradient accumulation, BN per micro-batch) does; the DDP test checks that.
  A last global batch smaller than world × micro_batches is dropped (BN needs samples on every rank).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from SkullVAELib import checkpoint as ckpt
from SkullVAELib.config import TrainConfig
from SkullVAELib.curves import CURVES_NAME, LOG_NAME, curve_logs, plot_curves, read_log, write_log
from SkullVAELib.distributed import DistContext, current_context
from SkullVAELib.errors import SkullVAEError
from SkullVAELib.losses import kld_standard_normal, soft_dice_loss, vae_loss
from SkullVAELib.networks import VAE, Decoder, Encoder
from SkullVAELib.progress import ProgressCallback

EpochCallback = Callable[[dict], None]


class _Stage1Forward(nn.Module):
    """VAE forward with externally drawn ε (so DDP shards see the same noise as 1 process)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.vae.encoder(x)
        z = mu.float() + eps * torch.exp(0.5 * logvar.float())
        return self.vae.decoder(z), mu, logvar


def _epoch_seed(seed: int, stage: int, epoch: int, stream: int) -> int:
    """Independent 63-bit seed per (seed, stage, epoch, stream) - stream 0: shuffle, 1: ε."""
    return int(np.random.SeedSequence([seed, stage, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


def _place_data(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The whole data set on ``device`` if it fits in half the free GPU memory, else on (pinned) CPU."""
    if data.ndim != 5 or data.shape[1] != 1:
        raise SkullVAEError(f"training data must be a (N, 1, X, Y, Z) tensor, got shape {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise SkullVAEError("no training volumes")
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


def _row(stage: int, epoch: int, beta: float, acc: list[float], cfg: TrainConfig, d: int, seconds: float) -> dict:
    """Epoch summary on the authors' per-batch scale (see ``curves``): acc = [Σ dice_b, Σ kld_b, n]."""
    dice_b, kld_b, n = acc[0] / max(acc[2], 1), acc[1] / max(acc[2], 1), acc[2]
    dice = cfg.dice_weight * cfg.batch_size * dice_b
    kld = cfg.batch_size * kld_b
    row = {"stage": stage, "epoch": epoch + 1, "beta": float(beta), "dice": dice, "kld": kld}
    row.update(beta_kld=beta * kld, loss=dice + beta * kld, dice_score=1.0 - dice_b, kld_per_dim=kld_b / d)
    row.update(seconds=seconds, samples=int(n))
    return row


def _run(
    *,
    stage: int,
    model: nn.Module,
    forward: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], dict],
    n: int,
    latent_size: int,
    beta: float,
    cfg: TrainConfig,
    ctx: DistContext,
    out_dir: Path,
    fingerprints: dict,
    resume: bool,
    progress: ProgressCallback | None,
    on_epoch: EpochCallback | None,
    micro_batches: int,
) -> list[dict]:
    """The epoch loop shared by both stages; ``model`` is what is optimised and checkpointed."""
    if micro_batches < 1:
        raise SkullVAEError(f"micro_batches must be >= 1, got {micro_batches}")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    path = ckpt.checkpoint_path(out_dir, stage)
    history: list[dict] = []
    start_epoch, start_step, acc, seconds0, noise_state = 0, 0, [0.0, 0.0, 0.0], 0.0, None
    if resume:
        rec = ckpt.load_checkpoint(path)
        if rec["stage"] != stage:
            raise SkullVAEError(f"this checkpoint is for stage {rec['stage']}, not stage {stage}", path)
        for key in ("beta", "batch_size", "seed", "dice_weight", "stage2_latent"):
            saved, now = rec["config"].get(key), cfg.to_dict().get(key)
            if key == "beta" and stage == 2:
                continue
            if saved != now:
                raise SkullVAEError(
                    f"the checkpoint was trained with {key}={saved}, not {now}; resume with the same settings", path
                )
        for name, tensor in fingerprints.items():
            ckpt.check_fingerprint(
                rec["fingerprints"][name], tensor, path, rtol=1e-4 if name != "data" else 1e-6, what=name
            )
        model.load_state_dict(rec["model"])
        optimizer.load_state_dict(rec["optimizer"])
        ckpt.restore_rng_state(rec["rng"])
        start_epoch, start_step, acc = rec["epoch"], rec["step"], list(rec["accumulators"])
        seconds0, noise_state, history = rec["epoch_seconds"], rec.get("noise_state"), list(rec["history"])

    def save(epoch: int, step: int, acc_now: list[float], seconds: float, noise: torch.Generator | None) -> None:
        ctx.barrier()
        if ctx.is_main:
            state = {
                "stage": stage,
                "epoch": epoch,
                "step": step,
                "accumulators": [float(a) for a in acc_now],
                "epoch_seconds": float(seconds),
                "history": history,
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": ckpt.capture_rng_state(),
                "fingerprints": {k: ckpt.data_fingerprint(v) for k, v in fingerprints.items()},
            }
            if noise is not None and step > 0:
                state["noise_state"] = noise.get_state()
            ckpt.save_checkpoint(path, state)
        ctx.barrier()

    def write_logs() -> None:
        if ctx.is_main:
            kept = [r for r in read_log(out_dir / LOG_NAME) if r["stage"] < stage]
            write_log(out_dir / LOG_NAME, kept + history)

    use_bf16 = (cfg.amp and ctx.device.type == "cuda") or (cfg.cpu_bf16 and ctx.device.type == "cpu")
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    need = ctx.world_size * micro_batches
    epoch, step, noise, in_step = start_epoch, start_step, None, False
    t0 = time.perf_counter() - seconds0
    with ckpt.DeferredInterrupt() as interrupt:
        try:
            for epoch in range(start_epoch, cfg.epochs):
                shuffle = torch.Generator().manual_seed(_epoch_seed(cfg.seed, stage, epoch, 0))
                perm = torch.randperm(n, generator=shuffle)
                batches = [b for b in perm.split(cfg.batch_size) if len(b) >= need]
                if not batches:
                    raise SkullVAEError(f"{n} volumes cannot fill one batch over {need} ranks x micro-batches")
                noise = torch.Generator(ctx.device).manual_seed(_epoch_seed(cfg.seed, stage, epoch, 1))
                if epoch != start_epoch or start_step == 0:
                    step, acc, t0 = 0, [0.0, 0.0, 0.0], time.perf_counter()
                elif noise_state is not None:
                    noise.set_state(noise_state)
                for b in range(step, len(batches)):
                    idx = batches[b]
                    eps = torch.randn((len(idx), latent_size), generator=noise, device=ctx.device)
                    positions = ctx.shard(torch.arange(len(idx)))
                    chunks = torch.tensor_split(positions, micro_batches)
                    in_step = True
                    optimizer.zero_grad(set_to_none=True)
                    sums = [0.0, 0.0, 0.0]
                    for k, pos in enumerate(chunks):
                        sync = k == len(chunks) - 1 or not ctx.distributed
                        with contextlib.nullcontext() if sync else forward.no_sync():
                            with autocast:
                                terms = loss_fn(forward, idx[pos], eps[pos.to(ctx.device)])
                            (terms["loss"] * ctx.world_size).backward()
                        sums[0] += float(terms["dice_per_sample"].detach().sum())
                        sums[1] += float(terms["kld_per_sample"].detach().sum())
                        sums[2] += len(pos)
                    optimizer.step()
                    acc = [a + s for a, s in zip(acc, ctx.all_sum(sums), strict=True)]
                    step, in_step = b + 1, False
                    if progress is not None and ctx.is_main:
                        frac = (epoch + step / len(batches)) / max(cfg.epochs, 1)
                        r = _row(stage, epoch, beta, acc, cfg, latent_size, 0.0)
                        progress(
                            f"train stage {stage}",
                            frac,
                            f"epoch {epoch + 1}/{cfg.epochs} dice {r['dice']:.2f} kld {r['kld']:.2f}",
                        )
                    if interrupt.requested:
                        raise KeyboardInterrupt
                row = _row(stage, epoch, beta, acc, cfg, latent_size, time.perf_counter() - t0)
                history.append(row)
                step, acc = 0, [0.0, 0.0, 0.0]
                write_logs()
                if on_epoch is not None and ctx.is_main:
                    on_epoch(row)
                if (epoch + 1) % max(cfg.checkpoint_every, 1) == 0 or epoch + 1 == cfg.epochs:
                    save(epoch + 1, 0, acc, 0.0, None)
        except KeyboardInterrupt:
            if in_step:  # a hard (second) Ctrl-C inside a step: the state is torn, keep the last checkpoint
                raise
            if step == 0 and history and history[-1]["epoch"] == epoch + 1:
                save(epoch + 1, 0, [0.0, 0.0, 0.0], 0.0, None)
            else:
                save(epoch, step, acc, time.perf_counter() - t0, noise)
            raise
    if cfg.epochs <= start_epoch and not path.exists():
        save(start_epoch, 0, [0.0, 0.0, 0.0], 0.0, None)
    write_logs()
    if ctx.is_main:
        plot_curves(curve_logs(out_dir), out_dir / CURVES_NAME)
    return history


def train_stage1(
    vae: VAE,
    data: torch.Tensor,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: EpochCallback | None = None,
    micro_batches: int = 1,
) -> list[dict]:
    """Train the β-VAE in place (β = ``cfg.beta``; 1e-4 gives the regular-VAE baseline).

    Args:
        vae: the model, trained in place (left in eval mode, on ``cfg.device``).
        data: ``(N, 1, X, Y, Z)`` soft occupancy in [0, 1] (float16/32) on the model grid.
        cfg: ``TrainConfig`` (epochs, batch = global batch, lr, β, seed, checkpoint_every, amp, ...).
        out_dir: receives ``checkpoints/stage1.pt``, ``training_log.csv``, ``curves.png``.
        resume: continue from ``checkpoints/stage1.pt`` exactly.
        progress: ``(stage, fraction, message)`` after every step (rank 0).
        on_epoch: called with each epoch's log row (rank 0).
        micro_batches: split each (per-rank) batch into this many gradient-accumulation chunks.

    Returns:
        the per-epoch rows of this stage (see ``curves`` for the keys), resumed epochs included.
    """
    ctx = current_context(cfg.device)
    out_dir = Path(out_dir)
    model = _prepare(vae, ctx, cfg)
    model.train()
    forward = _wrap(_Stage1Forward(model), ctx, cfg)
    on_device = _place_data(data, ctx.device)

    def loss_fn(fwd: nn.Module, idx: torch.Tensor, eps: torch.Tensor) -> dict:
        x = on_device[idx.to(on_device.device)].to(ctx.device, torch.float32, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        prob, mu, logvar = fwd(x, eps)
        return vae_loss(prob, x, mu, logvar, cfg.beta, cfg.dice_weight)

    history = _run(
        stage=1,
        model=model,
        forward=forward,
        loss_fn=loss_fn,
        n=data.shape[0],
        latent_size=vae.cfg.latent_size,
        beta=cfg.beta,
        cfg=cfg,
        ctx=ctx,
        out_dir=out_dir,
        fingerprints={"data": data},
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        micro_batches=micro_batches,
    )
    if model is not vae:
        vae.load_state_dict(model.state_dict())
    vae.to(ctx.device).eval()
    return history


@torch.no_grad()
def encode_dataset(
    encoder: Encoder, data: torch.Tensor, batch_size: int = 4, device: str | torch.device = "cpu", amp: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """μ, log σ² ``(N, d)`` float32 of every volume with the encoder in eval mode (BN running stats)."""
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
) -> list[dict]:
    """Train a NEW decoder on the frozen stage-1 encoder's latents with the Dice loss only.

    ``cfg.stage2_latent``: ``"sample"`` (z = μ + ε·σ, ε fresh every step: the paper) or
    ``"mu_plus_sigma"`` (z = μ + σ, fixed: the authors' code). μ, log σ² are computed once.
    ``cfg.beta`` is ignored (the KLD is logged for information, β·KLD = 0). Other arguments as
    :func:`train_stage1`; the checkpoint is ``checkpoints/stage2.pt``.
    """
    ctx = current_context(cfg.device)
    out_dir = Path(out_dir)
    for p in encoder.parameters():
        p.requires_grad_(False)
    on_device = _place_data(data, ctx.device)
    mu_all, logvar_all = encode_dataset(encoder, on_device, cfg.batch_size, ctx.device, cfg.amp)
    std_all = torch.exp(0.5 * logvar_all)
    kld_all = kld_standard_normal(mu_all, logvar_all)
    model = _prepare(decoder, ctx, cfg)
    model.train()
    forward = _wrap(model, ctx, cfg)
    fixed = cfg.stage2_latent == "mu_plus_sigma"

    def loss_fn(fwd: nn.Module, idx: torch.Tensor, eps: torch.Tensor) -> dict:
        i = idx.to(ctx.device)
        z = mu_all[i] + (std_all[i] if fixed else eps * std_all[i])
        x = on_device[idx.to(on_device.device)].to(ctx.device, torch.float32, non_blocking=True)
        dice_b = soft_dice_loss(fwd(z), x)
        return {"loss": cfg.dice_weight * dice_b.sum(), "dice_per_sample": dice_b, "kld_per_sample": kld_all[i]}

    history = _run(
        stage=2,
        model=model,
        forward=forward,
        loss_fn=loss_fn,
        n=data.shape[0],
        latent_size=encoder.cfg.latent_size,
        beta=0.0,
        cfg=cfg,
        ctx=ctx,
        out_dir=out_dir,
        fingerprints={"data": data, "latents": mu_all.cpu()},
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        micro_batches=micro_batches,
    )
    if model is not decoder:
        decoder.load_state_dict(model.state_dict())
    decoder.to(ctx.device).eval()
    return history
