"""Time to build the model-grid cache of the SkullFix cases, the cache size, and the reload time.

    python benchmarks/cache_build.py [--data ../shared/data/skullfix] [--grid 256,256,128] [--workers 1]

Builds into a fresh temporary cache folder (deleted afterwards unless --cache-dir is given),
then loads it again from the cache. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from SkullVAELib.cli.common import grid_arg
from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.config import RESAMPLE_MODES
from SkullVAELib.data.dataset import build_cache, discover_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "skullfix"
    )
    parser.add_argument("--grid", type=grid_arg, default=(256, 256, 128))
    parser.add_argument("--mode", default="area", choices=RESAMPLE_MODES)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, help="keep the cache here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = discover_cases(args.data)
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="skullvae-cache-bench-"))
    try:
        start = time.perf_counter()
        data = build_cache(cases, args.grid, cache_dir=cache_dir, mode=args.mode, workers=args.workers)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        again = build_cache(cases, args.grid, cache_dir=cache_dir, mode=args.mode)
        load_s = time.perf_counter() - start
        assert torch.equal(again.volumes, data.volumes)
        size = sum(f.stat().st_size for f in cache_dir.rglob("*.npy"))
        source = sum(c.path.stat().st_size for c in cases)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)
    grid = "×".join(map(str, args.grid))
    table = "\n".join([
        f"Cache build, {len(cases)} volumes ({args.data.name}), grid {grid}, mode {args.mode}, "
        f"{args.workers} worker(s), {args.threads} torch threads",
        "",
        "| volumes | build s | s / volume | reload s | cache MB (uint8 .npy) | source MB (gzip NRRD) | in-memory MB (float16) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {len(cases)} | {build_s:.1f} | {build_s / len(cases):.2f} | {load_s:.1f} | {size / 1e6:.0f} | {source / 1e6:.0f} "
        f"| {data.volumes.numel() * 2 / 1e6:.0f} |",
    ]) + "\n"  # fmt: skip
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
