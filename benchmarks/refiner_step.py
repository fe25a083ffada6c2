"""Seconds per training step of the facial refiner's CPU recipe: fp32 against bfloat16 autocast, the
network in the default (contiguous) or the channels-last 3D layout (what ``train-refiner --precision``
and the step trainer choose on a CPU); with ``--ema DECAY`` also the recipe's variant (bf16,
channels-last) with a moving average of the weights updated after every step (``train-refiner --ema``).

Usage::

    .venv/bin/python benchmarks/refiner_step.py --threads 2 --steps 6
    .venv/bin/python benchmarks/refiner_step.py --threads 2 --steps 6 --batch 2 --ema 0.999

The CPU recipe's network (U-Net 16-32-64-128 with the output head) on random crops of 72×64×64
voxels, batch 4, Dice + cross-entropy, AdamW; the first ``--warmup`` steps of each variant are not
timed; the variants run in turn, ``--rounds`` times. Whether this CPU computes bfloat16 natively
(AVX512-BF16 or AMX) is printed: elsewhere bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Section, table  # noqa: E402

VARIANTS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def step_seconds(
    precision: str, channels_last: bool, steps: int, warmup: int, batch: int, ema: float = 0.0
) -> list[float]:
    """Wall seconds of ``steps`` training steps after ``warmup`` untimed ones (``ema`` > 0: each step
    also updates a moving average of the weights)."""
    import torch
    from monai.losses import DiceCELoss

    from SkullVAELib.implant.learned.network import refiner_network
    from SkullVAELib.training.averaging import WeightAverage

    torch.manual_seed(0)
    network = refiner_network((16, 32, 64, 128), output_head=True)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-4)
    average = WeightAverage(network, ema) if ema > 0 else None
    loss_fn = DiceCELoss(sigmoid=True)
    x = (torch.rand(batch, 1, 72, 64, 64) > 0.7).float()
    y = (torch.rand(batch, 1, 72, 64, 64) > 0.9).float()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = network(x)
        loss = loss_fn(logits.float(), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if average is not None:
            average.update(network)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ema", type=float, default=0.0, help="also time bf16 channels-last with this weight average")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md")
    args = p.parse_args()
    import torch

    from SkullVAELib.core.devices import native_bf16

    torch.set_num_threads(args.threads)
    variants = [(*v, 0.0) for v in VARIANTS] + ([("bf16", True, args.ema)] if args.ema > 0 else [])
    times: dict[tuple[str, bool, float], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for precision, channels_last, ema in variants:
            seconds = step_seconds(precision, channels_last, args.steps, args.warmup, args.batch, ema)
            times[(precision, channels_last, ema)] += seconds
    base = statistics.median(times[variants[0]])
    rows = []
    for (precision, channels_last, ema), seconds in times.items():
        median = statistics.median(seconds)
        layout = ("channels-last 3D" if channels_last else "contiguous") + (f", weight average {ema}" if ema else "")
        rows.append(
            [precision, layout, f"{median:.3f}", f"{min(seconds):.3f}–{max(seconds):.3f}", f"{base / median:.2f}×"]
        )
    section = Section(
        "refiner_step", "Facial refiner CPU recipe: seconds per training step by precision and layout", args.threads
    )
    section.add(
        f"bfloat16 native on this CPU (AVX512-BF16 or AMX): {native_bf16('cpu')}. Batch {args.batch} crops of "
        f"72×64×64, U-Net 16-32-64-128 with the output head; {args.rounds} rounds × {args.steps} timed steps per "
        "variant, in turn.\n\n"
        + table(["precision", "network layout", "median s/step", "min–max", "speed-up vs fp32 contiguous"], rows)
    )
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
