"""`skullvae train-refiner`: the learned facial refiner (a 3D U-Net on a 1 mm face crop)."""

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
from SkullVAELib.core.config import LR_SCHEDULE_HELP, LR_SCHEDULES, PRECISION_HELP, PRECISIONS, TEST_TIME_SHIFTS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-refiner",
        help="train the learned facial refiner (facial defects drawn afresh every step)",
        description="Packs the complete skulls on a 1 mm LPS grid (--data, or read a packed file with --grids), "
        "then trains a 3D U-Net on face crops with facial defects drawn every step, keeping the weights with the "
        "best validation Dice. Put OUT/refiner.safetensors at MODEL/refiner.safetensors (or pass --refiner to "
        "`skullvae complete`). --pack-only writes the packed grids to send to a GPU machine. Ctrl-C or SIGTERM "
        "keeps the best weights so far, marked interrupted (exit 130); --resume continues exactly.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data folder (its complete_skull/) or a folder of complete skulls")
    src.add_argument("--grids", type=Path, help="packed grids (.npz) from an earlier --pack-only")
    p.add_argument(
        "--out", required=True, type=Path, help="folder for refiner.safetensors (or the .npz with --pack-only)"
    )
    p.add_argument("--train-ids", required=True, help="training case ids, e.g. 000-055")
    p.add_argument("--val-ids", default=None, help="validation case ids for model selection, e.g. 056-063")
    p.add_argument(
        "--extra",
        default=None,
        help="a folder of skulls with a cranial defect and an intact face (skullfix_test): more training faces",
    )
    p.add_argument(
        "--packed-extras",
        action="store_true",
        help="with --grids: train on every extra skull packed in it too (packed with --extra; "
        "for a GPU machine that has the packed file but not the skulls)",
    )
    p.add_argument("--pack-only", action="store_true", help="only write the packed grids of --data to --out (.npz)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    p.add_argument("--steps", type=int, default=100_000, help="optimiser steps at most (default 100000)")
    p.add_argument("--minutes", type=float, default=math.inf, help="wall-time budget; the best weights are kept")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/refiner.pt exactly")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint at least this often (default 5)")
    p.add_argument("--batch", type=int, default=2, help="crops per step (default 2)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help=LR_SCHEDULE_HELP)
    add_step_optimiser_args(p)
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps (default 200)")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seed of the weights, the drawn defects and the augmentation"
    )
    p.add_argument("--spacing", type=float, default=1.0, help="grid spacing in mm (default 1; the CPU recipe uses 2)")
    p.add_argument("--crop", default=None, help="crop X,Y,Z in voxels (default 144,128,128)")
    p.add_argument(
        "--output-head",
        action="store_true",
        help="end the U-Net in a 1x1x1 convolution (the CPU recipe; default: MONAI's top layer, the GPU recipe)",
    )
    p.add_argument("--channels", default=None, help="U-Net features per level (default 16,32,64,128,256)")
    p.add_argument(
        "--test-time-mirror",
        action="store_true",
        help="store in the weights that inference averages the face crop with its left-right mirror",
    )
    p.add_argument(
        "--test-time-shifts",
        type=int,
        choices=TEST_TIME_SHIFTS,
        default=1,
        help="store in the weights that inference averages N^3 passes on the grid moved by k/N of a voxel "
        "along each axis (default 1: one grid; the CPU recipe uses 2)",
    )
    _add_input_args(p)
    add_overwrite_arg(p, "replace an existing refiner (or packed grids) at --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    """What the network reads and learns: ``--soft-input``, ``--mirror-input``, ``--soft-target``."""
    p.add_argument(
        "--soft-input",
        action="store_true",
        help="the network reads the skull's anti-aliased bone fraction, not its 50%% mask (thin bone stays "
        "visible on a coarse grid); packs the fractions with the grids (--pack-only too)",
    )
    p.add_argument(
        "--mirror-input",
        action="store_true",
        help="the network also reads the face crop's left-right mirror (a second input channel): the intact "
        "side of a defect off the midline",
    )
    p.add_argument(
        "--soft-target",
        action="store_true",
        help="train on the implant's partial volume (its anti-aliased bone fraction) instead of its 50%% mask; "
        "packs the fractions like --soft-input",
    )


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows.refiner import (
        REFINER_FILE,
        extra_faces,
        pack_refiner_grids,
        packed_extras,
        train_refiner,
    )

    log = make_log(args.progress)  # stdout, or stderr under --progress json (stdout: JSON objects only)
    train_ids = parse_id_spec(args.train_ids) or []
    if args.extra is not None:
        train_ids += sorted(extra_faces(args.extra))  # always training skulls, never validation
    if args.packed_extras:
        if args.grids is None:
            raise SkullVAEError("--packed-extras needs --grids (a file packed with --extra)")
        train_ids += [i for i in packed_extras(args.grids) if i not in train_ids]
    val_ids = parse_id_spec(args.val_ids) or []
    numbers = (args.steps, args.batch, args.val_every, args.minutes, args.lr, args.checkpoint_minutes)
    if not all(v > 0 for v in numbers):  # NaN too
        raise SkullVAEError("--steps, --batch, --val-every, --minutes, --lr and --checkpoint-minutes must be positive")
    if args.pack_only:
        if args.data is None:
            raise SkullVAEError("--pack-only needs --data")
        progress = make_progress(args.progress)
        try:
            path = pack_refiner_grids(
                args.data,
                args.out,
                train_ids + val_ids,
                args.spacing,
                overwrite=args.overwrite,
                progress=progress,
                extra=args.extra,
                fractions=_packs_fractions(args),
            )
        finally:
            close_progress(progress)
        log(f"wrote the refiner grids of {len(train_ids) + len(val_ids)} skulls to {path}")
        return 0
    cfg = _refiner_settings(args)
    train_cfg = _train_settings(args)
    packed = _refuse_existing_outputs(args, REFINER_FILE)
    grids = args.grids
    progress = make_progress(args.progress)
    try:
        if grids is None:
            grids = packed
            if not (args.resume and grids.is_file()):
                pack_refiner_grids(
                    args.data,
                    grids,
                    train_ids + val_ids,
                    cfg.spacing_mm,
                    args.overwrite,
                    progress,
                    args.extra,
                    _packs_fractions(args),
                )
        path = train_refiner(
            grids,
            args.out,
            train_ids,
            val_ids,
            cfg,
            train_cfg,
            args.device,
            args.overwrite,
            resume=args.resume,
            progress=progress,
            log=log,
        )
    finally:
        close_progress(progress)
    log(f"wrote the facial refiner to {path}")
    return 0


def _refuse_existing_outputs(args: argparse.Namespace, refiner_file: str) -> Path:
    """OUT/grids.npz (returned), where training packs the skulls; refuse (before any work) a refiner or
    packed grids already at --out unless --overwrite (or --resume, which continues from them)."""
    from SkullVAELib.core.errors import SkullVAEError

    if (args.out / refiner_file).exists() and not (args.overwrite or args.resume):
        raise SkullVAEError(f"{refiner_file} exists; pass --overwrite to replace it (or --resume)", args.out)
    packed = args.out / "grids.npz"
    if args.grids is None and packed.exists() and not (args.overwrite or args.resume):
        raise SkullVAEError(
            "packed grids exist; pass --overwrite to repack them, or --grids to train from them", packed
        )
    return packed


def _packs_fractions(args: argparse.Namespace) -> bool:
    """Whether the packed grids need the skulls' bone fractions (a soft input or a soft target)."""
    return bool(args.soft_input or args.soft_target)


def _train_settings(args: argparse.Namespace):
    """The optimisation settings the flags ask for (a ``RefinerTrainConfig``)."""
    from SkullVAELib.workflows.refiner import RefinerTrainConfig

    return RefinerTrainConfig(
        **step_training_settings(args), checkpoint_minutes=args.checkpoint_minutes, soft_target=args.soft_target
    )


def _refiner_settings(args: argparse.Namespace):
    """The network and grid settings the flags ask for."""
    from SkullVAELib.workflows.refiner import RefinerConfig

    overrides: dict = {
        "spacing_mm": args.spacing,
        "output_head": args.output_head,
        "test_time_mirror": args.test_time_mirror,
        "test_time_shifts": args.test_time_shifts,
        "soft_input": args.soft_input,
        "mirror_input": args.mirror_input,
    }
    if args.crop:
        overrides["crop_shape"] = parse_integers(args.crop, "--crop")
    if args.channels:
        overrides["channels"] = parse_integers(args.channels, "--channels")
    cfg = RefinerConfig(**overrides)
    return cfg
