"""`skullvae train`: cached data → stage 1 (β-VAE) and/or stage 2 (decoupled decoder) → model bundle.

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) it joins the process group itself
(NCCL on CUDA, gloo on CPU); ``--batch`` is then the global batch. Rank 0 logs and saves.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, grid_arg, make_progress
from SkullVAELib.config import PRESETS
from SkullVAELib.errors import SkullVAEError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the β-VAE (stage 1) and the decoupled decoder (stage 2)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="data folder(s), merged by case id")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model bundle folder (written/updated)")
    p.add_argument("--stage", choices=("1", "2", "all"), default="all", help="1, 2 (needs a stage-1 bundle), or all")
    p.add_argument("--beta", type=float, default=100.0, help="KLD weight β of stage 1 (1e-4 = regular VAE)")
    p.add_argument("--epochs", type=int, default=200, help="stage-1 epochs (paper: 200)")
    p.add_argument("--epochs2", type=int, default=1200, help="stage-2 epochs (paper: 1200)")
    p.add_argument("--preset", default="paper", help="network preset: " + ", ".join(PRESETS))
    p.add_argument("--grid", type=grid_arg, default=None, help="model grid X,Y,Z (overrides the preset)")
    p.add_argument("--channels", default=None, help="encoder channels, e.g. 32,64,64,128,128,256")
    p.add_argument("--latent", type=int, default=None, help="latent size d (preset default 32)")
    p.add_argument("--batch", type=int, default=4, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoints exactly")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="N",
        help="epochs between checkpoints (default 1; 0 = by wall time only); see --checkpoint-minutes",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=5.0,
        metavar="M",
        help="also checkpoint mid-epoch once M minutes passed since the last one (default 5): whichever is sooner",
    )
    p.add_argument(
        "--recon-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="multiply stage 1's Dice term by S (default 1 = the paper). With the paper's scaling one nat of KL "
        "costs beta = 100 while a sample's whole Dice term is worth at most 80, so beta = 100 collapses the "
        "posterior; S ~ 1000 lets beta = 100 keep an informative one (docs/RESULTS.md, issue 11)",
    )
    p.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (one kernel per step)")
    p.add_argument(
        "--stage2-latent",
        choices=("sample", "mu_plus_sigma"),
        default="sample",
        help="stage-2 input: z ~ q(z|x) afresh (paper) or the fixed z = μ + σ (authors' code)",
    )
    p.add_argument("--cache-dir", default=None, help="folder for the model-grid cache (reused across runs)")
    p.add_argument(
        "--train-ids",
        default=None,
        help="case ids to train on: comma list, ranges like 000-063, or a file with one id per line",
    )
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on the CPU (fast on AMX/AVX-512-BF16 CPUs)")
    p.add_argument(
        "--channels-first",
        action="store_true",
        help="train in the default (channels-first) memory layout instead of channels-last-3d (faster on CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    add_progress_arg(p)
    p.set_defaults(func=run)


def _network(args: argparse.Namespace):
    from SkullVAELib.config import NetworkConfig, network_preset

    base = network_preset(args.preset)
    channels = base.channels
    if args.channels:
        try:
            channels = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            raise SkullVAEError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    return NetworkConfig(grid=args.grid or base.grid, channels=channels, latent_size=args.latent or base.latent_size)


def _train_config(args: argparse.Namespace, stage: int):
    from SkullVAELib.config import TrainConfig

    return TrainConfig(
        stage=stage,
        beta=args.beta,
        epochs=args.epochs if stage == 1 else args.epochs2,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
        recon_scale=args.recon_scale,
        fused_adam=args.fused_adam,
        stage2_latent=args.stage2_latent,
        amp=not args.no_amp,
        cpu_bf16=args.cpu_bf16,
        channels_last=not args.channels_first,
        compile=args.compile,
    )


def _load_data(args: argparse.Namespace, train_ids: list[str] | None, grid, ctx, progress):
    from SkullVAELib.dataset import build_cache, discover_cases, select_cases

    cases = select_cases(discover_cases([Path(d) for d in args.data]), train_ids)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 fills the cache first; the others then read it
    cached = build_cache(cases, grid, cache_dir=args.cache_dir, progress=progress if ctx.is_main else None)
    if ctx.is_main:
        ctx.barrier()
    return cached


def run(args: argparse.Namespace) -> int:
    import torch

    from SkullVAELib import __version__
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.checkpoint import checkpoint_path, load_checkpoint
    from SkullVAELib.dataset import parse_id_spec
    from SkullVAELib.distributed import current_context, init_distributed, shutdown_distributed
    from SkullVAELib.networks import VAE, Decoder
    from SkullVAELib.trainer import train_stage1, train_stage2

    out = Path(args.out)
    stages = (1, 2) if args.stage == "all" else (int(args.stage),)
    network = _network(args)  # validates grid / depth / channels first: one-line errors
    train_ids = parse_id_spec(args.train_ids)  # and the id spec, before any data is read
    cfgs = {s: _train_config(args, s) for s in stages}
    bundle = None
    if stages == (2,):
        bundle = ModelBundle.load(out)  # the stage-1 encoder; one-line error if absent
        if args.grid and tuple(args.grid) != bundle.network.grid:
            raise SkullVAEError(f"--grid {args.grid} differs from the stage-1 bundle's grid {bundle.network.grid}", out)
        network = bundle.network
    if args.resume and not checkpoint_path(out, stages[0]).is_file():
        raise SkullVAEError("--resume: no checkpoint to resume from", checkpoint_path(out, stages[0]))

    created = init_distributed(args.device)
    progress = make_progress(args.progress)
    try:
        ctx = current_context(args.device)
        cached = _load_data(args, train_ids, network.grid, ctx, progress)
        info = {
            "library_version": __version__,
            "data_manifest_hash": cached.manifest_hash,
            "train_cases": len(cached.case_ids),
            "train_case_ids": sorted(set(cached.case_ids)),
            "seed": args.seed,
            "batch_size": args.batch,
            "lr": args.lr,
            "world_size": ctx.world_size,
            "device": str(ctx.device),
        }
        stage1_trained = False
        if 1 in stages:
            done_before = load_checkpoint(checkpoint_path(out, 1))["epoch"] if args.resume else 0
            torch.manual_seed(args.seed)
            vae = VAE(network)
            t0 = time.perf_counter()
            hist = train_stage1(vae, cached.volumes, cfgs[1], out, resume=args.resume, progress=progress)
            info.update(
                beta=args.beta,
                epochs_stage1=args.epochs,
                stage1_seconds=round(time.perf_counter() - t0, 2),
                seconds_per_epoch_stage1=_mean_seconds(hist),
                stage1_final=_final(hist),
            )
            bundle = ModelBundle.from_vae(vae.cpu(), info=info)
            stage1_trained = len(hist) > done_before
        else:
            if bundle.info.get("data_manifest_hash") not in (None, cached.manifest_hash) and ctx.is_main:
                print("skullvae train: note: the stage-2 data differ from the stage-1 bundle's data manifest")
            bundle.info.update({k: v for k, v in info.items() if k != "seed"})
        if 2 in stages:
            torch.manual_seed(args.seed + 1)
            decoder = Decoder(network)
            # A stage-2 checkpoint is stale once stage 1 trained further: stage 2 then starts afresh.
            resume2 = args.resume and checkpoint_path(out, 2).is_file() and not stage1_trained
            t0 = time.perf_counter()
            hist = train_stage2(
                bundle.encoder, decoder, cached.volumes, cfgs[2], out, resume=resume2, progress=progress
            )
            bundle.decoupled_decoder = decoder.cpu()
            bundle.encoder.cpu()
            for p in bundle.encoder.parameters():
                p.requires_grad_(True)
            bundle.info.update(
                epochs_stage2=args.epochs2,
                stage2_latent=args.stage2_latent,
                stage2_seed=args.seed + 1,
                stage2_seconds=round(time.perf_counter() - t0, 2),
                seconds_per_epoch_stage2=_mean_seconds(hist),
                stage2_final=_final(hist),
            )
        if ctx.is_main:
            bundle.save(out)
            _draw_curves(out)
            if hasattr(progress, "close"):
                progress.close()
            print(f"skullvae train: wrote {bundle.kind} model bundle {out}")
        ctx.barrier()
    finally:
        shutdown_distributed(created)
    return 0


def _draw_curves(out: Path) -> None:
    """curves.png (Fig. 3) from the training logs: the trainer draws nothing (HT; to move into workflows)."""
    from SkullVAELib.curves import plot_curves
    from SkullVAELib.training_log import CURVES_NAME, curve_logs

    plot_curves(curve_logs(out), out / CURVES_NAME)


def _mean_seconds(history: list[dict]) -> float | None:
    secs = [r["seconds"] for r in history if r.get("seconds")]
    return round(sum(secs) / len(secs), 4) if secs else None


def _final(history: list[dict]) -> dict:
    if not history:
        return {}
    last = history[-1]
    return {k: round(float(last[k]), 5) for k in ("dice", "kld", "dice_score", "kld_per_dim")}
