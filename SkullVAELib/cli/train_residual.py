"""`skullvae train-residual`: the learned cranial residual (a 3D U-Net that corrects the rim fit)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from SkullVAELib.cli.common import (
    add_overwrite_arg,
    add_progress_arg,
    add_step_optimiser_args,
    close_progress,
    make_log,
    make_progress,
    parse_integers,
    seed_arg,
    step_training_settings,
)
from SkullVAELib.core.config import LR_SCHEDULE_HELP, LR_SCHEDULES, PRECISION_HELP, PRECISIONS
from SkullVAELib.workflows.residual import CRANIAL_STYLES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-residual",
        help="train the learned cranial residual (a 3D U-Net correcting the rim fit inside the hole)",
        description="Runs the rim fit on real and drawn cranial defects of --data (and, with --extra, on new "
        "defects cut into skulls that have a hole already, that hole kept out of the loss) and stores crops "
        "around each implant as sample pools in OUT (about 8 s per sample on one core), then trains a 3D U-Net "
        "that shifts the rim fit's surface, keeping the weights with the best validation Dice. Put "
        "OUT/residual.safetensors at MODEL/residual.safetensors: `skullvae complete --model MODEL` then tries "
        "the residual first. --pool-only stops after the pools (to send them to a GPU machine); --pools trains "
        "on pools made before. Ctrl-C or SIGTERM keeps the best weights so far, marked interrupted (exit 130).",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the pools and residual.safetensors")
    p.add_argument("--data", help="data folder (SkullFix layout) whose skulls make the pools")
    p.add_argument("--train-ids", help="training case ids of --data, e.g. 000-055")
    p.add_argument("--val-ids", default=None, help="validation case ids of --data, e.g. 056-063")
    p.add_argument("--extra", default=None, help="a folder of defective skulls without ground truth (skullfix_test)")
    p.add_argument("--extra-ids", default=None, help="case ids of --extra (default: all)")
    p.add_argument("--draws", type=int, default=1, help="drawn defects per skull (default 1)")
    p.add_argument(
        "--styles",
        default=",".join(CRANIAL_STYLES),
        help="the drawn defects' shapes, taking turns by skull and draw (default and choices: "
        f"{','.join(CRANIAL_STYLES)})",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="skulls made into samples side by side, one worker process and core each, about 1.5 GB "
        "of memory each at SkullFix's resolution (default 1)",
    )
    p.add_argument("--pools", nargs="+", type=Path, default=None, help="train on these pool files (no --data)")
    p.add_argument("--val-pools", nargs="+", type=Path, default=(), help="validation pool files (with --pools)")
    p.add_argument("--pool-only", action="store_true", help="only write the pools of --data to --out")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    p.add_argument("--steps", type=int, default=100_000, help="optimiser steps at most (default 100000)")
    p.add_argument("--minutes", type=float, default=math.inf, help="wall-time budget; the best weights are kept")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/residual.pt exactly")
    p.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help=LR_SCHEDULE_HELP)
    add_step_optimiser_args(p)
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="warp every training crop afresh: a random affine (rotation, scale, shear) and an elastic field "
        "(default on: validation chose it, docs/RESULTS.md; --no-augment resumes a run made without it)",
    )
    p.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the weights, the batches and the augmentation")
    p.add_argument("--channels", default=None, help="U-Net features per level (default 16,32,64,128)")
    p.add_argument("--spacing", type=float, default=2.0, help="crop voxel size in mm (default 2: the CPU recipe)")
    p.add_argument("--crop", default=None, help="crop X,Y,Z in voxels (default 64,64,64)")
    p.add_argument(
        "--test-time-mirror",
        action="store_true",
        help="store in the weights that inference averages each crop with its left-right mirror",
    )
    add_overwrite_arg(p, "replace existing pools or residual weights at --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def _pools(args, cfg, progress, log) -> tuple[list[Path], list[Path]]:
    """Build (or, on --resume, reuse) the training and validation pools of --data / --extra in --out."""
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows.residual import build_residual_pool, defective_ids

    if args.data is None or not args.train_ids:
        raise SkullVAEError("give --data with --train-ids (or --pools)")
    styles = _styles(args.styles)
    jobs = [("pool-train.npz", args.data, parse_id_spec(args.train_ids), ("real", *styles), "")]
    if args.val_ids:
        jobs.append(("pool-val.npz", args.data, parse_id_spec(args.val_ids), ("real", *styles), ""))
    if args.extra:
        ids = parse_id_spec(args.extra_ids) if args.extra_ids else defective_ids(args.extra)
        jobs.append(("pool-extra.npz", args.extra, ids, ("extra",), "extra-"))
    train, val = [], []
    for name, data, ids, kinds, prefix in jobs:
        path = args.out / name
        if not (args.resume and path.is_file()):
            build_residual_pool(data, ids, path, kinds, cfg, draws=args.draws, overwrite=args.overwrite,
                                progress=progress, id_prefix=prefix, jobs=args.jobs, extra_styles=styles)  # fmt: skip
            log(f"wrote {path}")
        (val if name == "pool-val.npz" else train).append(path)
    return train, val


def _styles(text: str) -> tuple[str, ...]:
    """The --styles list, each one of CRANIAL_STYLES (one-line error otherwise)."""
    from SkullVAELib.core.errors import SkullVAEError

    styles = tuple(s.strip() for s in text.split(",") if s.strip())
    if not styles or set(styles) - set(CRANIAL_STYLES):
        raise SkullVAEError(f"--styles takes some of {','.join(CRANIAL_STYLES)}, got {text!r}")
    return styles


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.workflows.residual import RESIDUAL_FILE, ResidualConfig, ResidualTrainConfig, train_residual

    log = make_log(args.progress)
    numbers = (args.steps, args.batch, args.val_every, args.minutes, args.lr, args.draws, args.jobs)
    if not all(v > 0 for v in numbers):  # NaN too
        raise SkullVAEError("--steps, --batch, --val-every, --minutes, --lr, --draws and --jobs must be positive")
    if (args.out / RESIDUAL_FILE).exists() and not (args.overwrite or args.resume or args.pool_only):
        raise SkullVAEError(f"{RESIDUAL_FILE} exists; pass --overwrite to replace it (or --resume)", args.out)
    overrides: dict = {"spacing_mm": args.spacing, "test_time_mirror": args.test_time_mirror}
    if args.channels:
        overrides["channels"] = parse_integers(args.channels, "--channels")
    if args.crop:
        overrides["crop_shape"] = parse_integers(args.crop, "--crop")
    cfg = ResidualConfig(**overrides)
    train_cfg = ResidualTrainConfig(**step_training_settings(args), augment=args.augment)
    progress = make_progress(args.progress)
    try:
        if args.pools:
            train, val = list(args.pools), list(args.val_pools)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            train, val = _pools(args, cfg, progress, log)
            if args.pool_only:
                return 0
        path = train_residual(train, args.out, val, cfg, train_cfg, args.device, args.overwrite,
                              resume=args.resume, progress=progress, log=log)  # fmt: skip
    finally:
        close_progress(progress)
    log(f"wrote the cranial residual to {path}")
    return 0
