"""`skullvae cache`: map every case of a data set to the model grid once and keep it on disk."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, grid_arg, make_progress


def register(subparsers) -> None:
    p = subparsers.add_parser("cache", help="precompute the model-grid volumes of a data set (cached on disk)")
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="data folder(s): complete_skull/, defective_skull/, facial_defective_skull/ (merged by case id)",
    )
    p.add_argument("--grid", type=grid_arg, default=(256, 256, 128), help="model grid X,Y,Z (default 256,256,128)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $SKULLVAE_CACHE or ~/.cache/skullvae)")
    p.add_argument(
        "--mode",
        choices=("area", "nearest"),
        default="area",
        help="area: soft occupancy (accurate, default); nearest: the paper's resizing",
    )
    p.add_argument("--workers", type=int, default=1, help="processes computing missing volumes (default 1)")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.dataset import build_cache, default_cache_dir, discover_cases

    cases = discover_cases([Path(d) for d in args.data])
    progress = make_progress(args.progress)
    try:
        data = build_cache(
            cases, args.grid, cache_dir=args.cache_dir, mode=args.mode, progress=progress, workers=max(1, args.workers)
        )
    finally:
        if hasattr(progress, "close"):
            progress.close()
    counts = ", ".join(f"{n} {label}" for label, n in Counter(data.labels).items())
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    if args.progress != "json":
        print(f"cached {len(data)} volumes ({counts}) at {'x'.join(map(str, data.grid))} ({args.mode}) in {cache_dir}")
        print(f"manifest hash {data.manifest_hash}")
    return 0
