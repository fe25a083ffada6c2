"""`skullvae build-atlas`: the complete training skulls as an atlas set for the atlas implant."""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, close_progress, make_progress, positive_float
from SkullVAELib.core.config import ATLAS_SPACING_MM


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-atlas",
        help="write complete training skulls as an atlas set (facial defects are filled from it)",
        description="Registered to a patient, the best-matching skulls of this set fill defects the rim fit "
        "cannot (facial ones). Put it at MODEL/atlas to make `skullvae complete --model MODEL` use it. "
        "It holds the training skulls themselves: keep it as private as the data.",
    )
    p.add_argument("--data", required=True, help="data folder (its complete_skull/) or a folder of complete skulls")
    p.add_argument("--out", required=True, type=Path, help="atlas set folder to write (e.g. MODEL/atlas)")
    p.add_argument("--train-ids", default=None, help="case ids to include, e.g. 000-055 (default: all)")
    p.add_argument(
        "--spacing",
        type=positive_float,
        default=ATLAS_SPACING_MM,
        help=f"registration grid spacing in mm (default {ATLAS_SPACING_MM:g})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing atlas set at --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows import build_atlas

    progress = make_progress(args.progress)
    try:
        atlas = build_atlas(
            args.data, args.out, parse_id_spec(args.train_ids), args.spacing, args.overwrite, progress=progress
        )
    finally:
        close_progress(progress)
    if args.progress != "json":
        print(f"wrote an atlas set of {len(atlas)} skulls to {atlas.folder}")
    return 0
