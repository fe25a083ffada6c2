"""`skullvae train`: cached data → stage 1 (β-VAE) and/or stage 2 (decoupled decoder) → model bundle.

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) it joins the process group itself
(NCCL on CUDA, gloo on CPU); ``--batch`` is then the global batch. Rank 0 logs and saves.
The work is :func:`SkullVAELib.workflows.train_model`.
"""

from __future__ import annotations

import argparse
import os

from SkullVAELib.cli.augment_args import add_augment_args, augment_settings
from SkullVAELib.cli.common import (
    add_network_args,
    add_progress_arg,
    add_resample_arg,
    close_progress,
    make_log,
    make_progress,
    network_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_arg,
)
from SkullVAELib.core.config import PRECISION_HELP, PRECISIONS


def register(subparsers) -> None:
    """Add the ``train`` subcommand and its options to ``subparsers``."""
    p = subparsers.add_parser("train", help="train the β-VAE (stage 1) and the decoupled decoder (stage 2)")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="data folder(s), merged by case id")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model bundle folder (written/updated)")
    _add_stage_args(p)
    add_network_args(p)
    _add_optimizer_args(p)
    _add_checkpoint_args(p)
    _add_loss_args(p)
    p.add_argument("--cache-dir", default=None, help="folder for the model-grid cache (reused across runs)")
    add_resample_arg(p, default_help="area (--stage 2 alone: the stage-1 bundle's)")  # recorded in the bundle
    _add_validation_args(p)
    _add_speed_args(p)
    add_augment_args(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def _add_stage_args(p: argparse.ArgumentParser) -> None:
    """``--stage`` and the per-stage settings: ``--beta``, ``--epochs``, ``--epochs2``."""
    p.add_argument("--stage", choices=("1", "2", "all"), default="all", help="1, 2 (needs a stage-1 bundle), or all")
    p.add_argument(
        "--beta", type=non_negative_float, default=100.0, help="KLD weight β of stage 1 (1e-4 = regular VAE)"
    )
    p.add_argument("--epochs", type=non_negative_int, default=200, help="stage-1 epochs (paper: 200)")
    p.add_argument("--epochs2", type=non_negative_int, default=1200, help="stage-2 epochs (paper: 1200)")


def _add_optimizer_args(p: argparse.ArgumentParser) -> None:
    """The optimiser and run settings: ``--batch``, ``--lr``, ``--seed``, ``--device``."""
    p.add_argument("--batch", type=positive_int, default=4, help="global batch size")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the weights, the batches and the augmentation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    """Resuming and checkpointing: ``--resume``, ``--overwrite``, ``--checkpoint-every``, ``--checkpoint-minutes``."""
    p.add_argument("--resume", action="store_true", help="continue from MODEL_DIR/checkpoints exactly")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in MODEL_DIR (refused without it)")
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=1,
        metavar="N",
        help="epochs between checkpoints (default 1; 0 = by wall time only); see --checkpoint-minutes",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=positive_float,
        default=5.0,
        metavar="M",
        help="also checkpoint mid-epoch once M minutes passed since the last one (default 5): whichever is sooner",
    )


def _add_loss_args(p: argparse.ArgumentParser) -> None:
    """Loss and optimiser variants: ``--recon-scale``, ``--fused-adam``, ``--stage2-latent``."""
    p.add_argument(
        "--recon-scale",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="multiply stage 1's Dice term by S (default 1 = the paper). With the paper's scaling one nat of KL "
        "costs beta = 100 while a sample's whole Dice term is worth at most 80, so beta = 100 collapses the "
        "posterior; S ~ 1000 lets beta = 100 keep an informative one (docs/results/issue-11.md)",
    )
    p.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (one kernel per step)")
    p.add_argument(
        "--stage2-latent",
        choices=("sample", "mu_plus_sigma"),
        default="sample",
        help="stage-2 input: z ~ q(z|x) afresh (paper) or the fixed z = μ + σ (authors' code)",
    )


def _add_validation_args(p: argparse.ArgumentParser) -> None:
    """Case selection and validation: ``--train-ids``, ``--val-ids``, ``--val-every``, ``--patience``."""
    p.add_argument(
        "--train-ids",
        default=None,
        help="case ids to train on: comma list, ranges like 000-063, or a file with one id per line",
    )
    p.add_argument(
        "--val-ids",
        default=None,
        help="validation case ids (same syntax; disjoint from --train-ids): reconstruction Dice every "
        "--val-every epochs, the best weights are kept",
    )
    p.add_argument(
        "--val-every", type=positive_int, default=10, metavar="K", help="epochs between validations (default 10)"
    )
    p.add_argument(
        "--patience",
        type=non_negative_int,
        default=0,
        metavar="P",
        help="stop a stage after P validations without improvement (default 0 = never stop early)",
    )


def _add_speed_args(p: argparse.ArgumentParser) -> None:
    """Speed settings: ``--precision``, ``--channels-first``, ``--compile``."""
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    # the flags before --precision, kept working: --no-amp is fp32, --cpu-bf16 is bf16
    p.add_argument("--no-amp", dest="precision", action="store_const", const="fp32", help=argparse.SUPPRESS)
    p.add_argument("--cpu-bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)
    p.add_argument(
        "--channels-first",
        action="store_true",
        help="train in the default (channels-first) memory layout instead of channels-last-3d (faster on CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")


def train_configs(args: argparse.Namespace) -> dict:
    """{stage: TrainConfig} of ``--stage`` from the parsed arguments."""
    from SkullVAELib.core.config import TrainConfig

    stages = (1, 2) if args.stage == "all" else (int(args.stage),)
    return {
        s: TrainConfig(
            stage=s,
            beta=args.beta,
            epochs=args.epochs if s == 1 else args.epochs2,
            batch_size=args.batch,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            checkpoint_every=args.checkpoint_every,
            checkpoint_minutes=args.checkpoint_minutes,
            recon_scale=args.recon_scale,
            fused_adam=args.fused_adam,
            val_every=args.val_every,
            patience=args.patience,
            stage2_latent=args.stage2_latent,
            precision=args.precision,
            channels_last=not args.channels_first,
            compile=args.compile,
        )
        for s in stages
    }


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows import train_model

    network = network_from_args(args)  # validates grid / depth / channels first: one-line errors
    train_ids = parse_id_spec(args.train_ids)  # and the id spec, before any data is read
    val_ids = parse_id_spec(args.val_ids)
    stages = train_configs(args)
    augment = augment_settings(args)  # --augment settings (the workflow checks them before any data is read)
    if set(stages) == {2} and not args.grid:
        network = None  # stage 2 alone: the stage-1 bundle's network
    progress = make_progress(args.progress)
    try:
        bundle = train_model(
            args.data,
            args.out,
            network,
            stages,
            train_ids=train_ids,
            validation_ids=val_ids,
            cache_dir=args.cache_dir,
            resample=args.resample,
            resume=args.resume,
            overwrite=args.overwrite,
            augment=augment,
            progress=progress,
            log=make_log(args.progress),
        )
    finally:
        close_progress(progress)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: rank 0 reports
        print(f"skullvae train: wrote {bundle.kind} model bundle {args.out}")
    return 0
