"""Seconds per training epoch (stage 1, batch 4) on this machine, in-memory cache vs re-reading NRRD.

A few optimiser steps on random-but-realistic data, extrapolated to an epoch of ``--volumes``
volumes (labelled as an extrapolation), plus the time of one SkullFix read + area resampling
(what a non-cached loader pays per volume and epoch, as the authors' code did).

    .venv/bin/python benchmarks/train_throughput.py --threads 2 --grids 128,128,64 256,256,128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from SkullVAELib.cli.common import grid_arg
from SkullVAELib.config import NetworkConfig
from SkullVAELib.losses import vae_loss
from SkullVAELib.networks import VAE


def step_seconds(grid, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    vae = VAE(NetworkConfig(grid=grid)).train()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4)
    x = (torch.rand(batch, 1, *grid) > 0.9).float()
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators
        t = time.perf_counter()
        opt.zero_grad()
        prob, mu, logvar, _ = vae(x)
        vae_loss(prob, x, mu, logvar, beta=100.0)["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return sum(times[1:]) / steps


def read_seconds(skullfix: Path, grid) -> float:
    from SkullVAELib.grid import to_model_grid
    from SkullVAELib.image import read_skull

    t = time.perf_counter()
    to_model_grid(read_skull(skullfix / "complete_skull" / "000.nrrd"), grid)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grids", nargs="+", type=grid_arg, default=[(128, 128, 64), (256, 256, 128)])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--volumes", type=int, default=192)
    p.add_argument("--skullfix", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/skullfix")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for grid in args.grids:
        s = step_seconds(grid, args.steps, args.batch)
        steps = -(-args.volumes // args.batch)
        line = f"paper channels, grid {grid}, batch {args.batch}, {args.threads} threads: {s:.2f} s/step; "
        line += f"extrapolated epoch of {args.volumes} volumes: {s * steps:.0f} s in memory"
        if (args.skullfix / "complete_skull" / "000.nrrd").is_file():
            r = read_seconds(args.skullfix, grid)
            line += f"; one SkullFix read+resample {r:.2f} s -> {s * steps + r * args.volumes:.0f} s re-reading"
        print(line, flush=True)


if __name__ == "__main__":
    main()
