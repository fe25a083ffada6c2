"""Round-trip Dice of the model-grid mapping on the SkullFix complete skulls.

For each case: original mask → model grid → back to the original grid → threshold 0.5,
Dice against the original. Both modes ("area": area-average down + trilinear up;
"nearest": the paper's) at 256×256×128 and 128×128×64. Prints a markdown table.

    python benchmarks/grid_roundtrip.py [--data ../shared/data/skullfix] [--out table.md] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.config import RESAMPLE_MODES as MODES
from SkullVAELib.data.grid import from_model_grid, to_model_grid
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import read_skull

GRIDS = ((256, 256, 128), (128, 128, 64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "skullfix"
    parser.add_argument("--data", type=Path, default=default, help="SkullFix folder (with complete_skull/)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--limit", type=int, default=0, help="only the first N cases (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    files = sorted((args.data / "complete_skull").glob("*.nrrd"))
    if args.limit:
        files = files[: args.limit]
    scores: dict[tuple, list[float]] = {(g, m): [] for g in GRIDS for m in MODES}
    seconds: dict[tuple, list[float]] = {(g, m): [] for g in GRIDS for m in MODES}
    for n, path in enumerate(files, 1):
        skull = read_skull(path)
        for grid in GRIDS:
            for mode in MODES:
                start = time.perf_counter()
                back = from_model_grid(to_model_grid(skull, grid, mode), skull, mode)
                seconds[grid, mode].append(time.perf_counter() - start)
                scores[grid, mode].append(dice(back > 0.5, skull.mask))
                del back
        print(f"[{n}/{len(files)}] {path.name}: " + ", ".join(f"{v[-1]:.4f}" for v in scores.values()), flush=True)

    lines = [
        f"Round-trip Dice on {len(files)} SkullFix complete skulls (down to the grid, back up, threshold 0.5)",
        "",
        f"| grid | mode | mean DSC | min DSC | worst case | mean s (down+up, {args.threads} threads) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (grid, mode), values in scores.items():
        worst = files[int(np.argmin(values))].stem
        lines.append(
            f"| {'×'.join(map(str, grid))} | {mode} | {np.mean(values):.4f} | {np.min(values):.4f} | {worst} "
            f"| {np.mean(seconds[grid, mode]):.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
