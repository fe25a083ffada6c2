"""`skullvae cache`: map every case of a data set to the model grid once and keep it on disk."""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import (
    add_network_args,
    add_progress_arg,
    add_resample_arg,
    close_progress,
    make_progress,
    positive_int,
)
from SkullVAELib.core.config import DEFAULT_RESAMPLE, network_preset


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="precompute the model-grid volumes of a data set (cached on disk)")
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="data folder(s): complete_skull/, defective_skull/, facial_defective_skull/ (merged by case id)",
    )
    add_network_args(p, architecture=False)  # the same grid choice as `train` (default: the paper's 256,256,128)
    p.add_argument("--cache-dir", default=None, help="cache folder (default $SKULLVAE_CACHE or ~/.cache/skullvae)")
    add_resample_arg(p, default=DEFAULT_RESAMPLE)
    p.add_argument("--workers", type=positive_int, default=1, help="processes computing missing volumes (default 1)")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import cache_data_set

    resample = args.resample
    grid = args.grid or network_preset(args.preset).grid
    progress = make_progress(args.progress)
    try:
        data, counts, cache_dir = cache_data_set(args.data, grid, args.cache_dir, resample, args.workers, progress)
    finally:
        close_progress(progress)
    if args.progress != "json":
        summary = ", ".join(f"{n} {label}" for label, n in counts.items())
        print(f"cached {len(data)} volumes ({summary}) at {'x'.join(map(str, data.grid))} ({resample}) in {cache_dir}")
        print(f"manifest hash {data.manifest_hash}")
    return 0
