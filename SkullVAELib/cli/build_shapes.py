"""`skullvae build-shapes`: complete training skulls' ray maps, the rim fit's shape cue, into a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_overwrite_arg, add_progress_arg, close_progress, make_progress


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-shapes",
        help="write complete training skulls' ray maps as the rim fit's shape cue (MODEL/shapes.safetensors)",
        description="Casts rays through each complete skull and stores its outer radius and bone thickness per "
        "direction in MODEL/shapes.safetensors. `skullvae complete --model MODEL` then fills a hole the "
        "patient's mirror does not cover (a defect across the mid-plane) from the skulls nearest on its rim, "
        "corrected to the rim. About 0.3 s per skull after reading. It reproduces the training skulls' vaults "
        "at 1 degree: keep it as private as the data.",
    )
    p.add_argument("--data", required=True, help="data folder (its complete_skull/) or a folder of complete skulls")
    p.add_argument("--out", required=True, type=Path, help="model folder to write shapes.safetensors into")
    p.add_argument("--train-ids", default=None, help="case ids to include, e.g. 000-055 (default: all)")
    add_overwrite_arg(p, "replace an existing shapes.safetensors in --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows import build_shapes

    progress = make_progress(args.progress)
    try:
        path, bank = build_shapes(args.data, args.out, parse_id_spec(args.train_ids), args.overwrite, progress)
    finally:
        close_progress(progress)
    if args.progress != "json":
        print(f"wrote the ray maps of {len(bank)} skulls to {path}")
    return 0
