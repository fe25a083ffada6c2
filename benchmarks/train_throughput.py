"""Training throughput: the reference-style pipeline vs ours vs the network alone (compute floor).

One run, one machine, same grid, same batch size, the same real SkullFix volumes:

* reference: MONAI ``LoadImaged`` + ``EnsureChannelFirstd`` + ``Resized(mode="nearest")`` per
  sample per epoch through a ``DataLoader`` (``--workers``), MONAI ``VarAutoEncoder`` with the
  paper's arguments, loss 80·DiceLoss(to_onehot_y, softmax, sum) + β·Σ KLD (the authors' code);
  batches are unwrapped from MetaTensor to plain tensors before the network (in the
  reference's favour: MetaTensor bookkeeping on every op would only slow it down).
* ours: ``dataset.build_cache`` (built once before timing, its time reported separately) and
  ``trainer.train_stage1`` on the in-memory float16 cache; step times come from the trainer's
  progress callback (called after every optimiser step), epoch time from its log row.
* floor: our ``VAE`` + ``vae_loss`` + Adam on float32 batches already in memory, nothing else.

Variants run interleaved (reference, ours, floor, then again). At grids with ``--epochs 0``
only ``--steps`` steady-state steps are timed (after one warm-up step) and the epoch is
extrapolated (labelled so).

    .venv/bin/python benchmarks/train_throughput.py --volumes 16 --threads 2 --workers 2 \
        --grid 128,128,64 --epochs 2 --grid-steps 256,256,128:2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _report import SKULLFIX, Section, table

from SkullVAELib.cli.common import grid_arg

BETA = 100.0
PAPER_CHANNELS = (32, 64, 64, 128, 128, 256)


def reference_parts(files: list[Path], grid, batch: int, workers: int):
    """(loader, network, optimiser, loss_fn) of the authors' pipeline (MONAI everything)."""
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceLoss
    from monai.networks.nets import VarAutoEncoder
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    transforms = Compose([
        LoadImaged(keys="img", image_only=True),
        EnsureChannelFirstd(keys="img"),
        Resized(keys="img", spatial_size=grid, mode="nearest"),
    ])  # fmt: skip
    loader = DataLoader(Dataset([{"img": str(f)} for f in files], transforms), batch_size=batch, shuffle=True,
                        num_workers=workers)  # fmt: skip
    torch.manual_seed(0)
    net = VarAutoEncoder(spatial_dims=3, in_shape=(1, *grid), out_channels=2, channels=PAPER_CHANNELS,
                         strides=(2,) * 6, latent_size=32, norm="BATCH", num_res_units=0).train()  # fmt: skip
    dice = DiceLoss(to_onehot_y=True, softmax=True, reduction="sum")

    def loss_fn(x):
        recon, mu, logvar, _ = net(x)
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return 80.0 * dice(recon, x) + BETA * kld

    return loader, torch.optim.Adam(net.parameters(), lr=1e-4), loss_fn


def reference_steps(parts, max_steps: int | None) -> list[float]:
    """Seconds of each optimiser step of one pass over the loader (data wait included)."""
    loader, opt, loss_fn = parts
    times, t = [], time.perf_counter()
    for batch in loader:
        x = batch["img"].as_tensor().float()
        opt.zero_grad()
        loss_fn(x).backward()
        opt.step()
        now = time.perf_counter()
        times.append(now - t)
        t = now
        if max_steps is not None and len(times) >= max_steps:
            break
    return times


def ours_steps(
    volumes: torch.Tensor, grid, batch: int, channels_last: bool, out_dir: Path
) -> tuple[list[float], float]:
    """(seconds of each step, the epoch seconds of the trainer's log row) of one train_stage1 epoch."""
    from SkullVAELib.core.config import NetworkConfig, TrainConfig
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    torch.manual_seed(0)
    vae = VAE(NetworkConfig(grid=grid, channels=PAPER_CHANNELS))
    stamps = [time.perf_counter()]
    cfg = TrainConfig(epochs=1, batch_size=batch, beta=BETA, device="cpu", checkpoint_every=10**6,
                      channels_last=channels_last)  # fmt: skip
    history = train_stage1(vae, volumes, cfg, out_dir, progress=lambda *a: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], history[-1]["seconds"]


def floor_parts(grid, channels_last: bool):
    from SkullVAELib.core.config import NetworkConfig
    from SkullVAELib.vae.losses import vae_loss
    from SkullVAELib.vae.networks import VAE

    torch.manual_seed(0)
    vae = VAE(NetworkConfig(grid=grid, channels=PAPER_CHANNELS)).train()
    if channels_last:
        vae.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4)

    def step(x):
        opt.zero_grad(set_to_none=True)
        prob, mu, logvar, _ = vae(x)
        vae_loss(prob, x, mu, logvar, BETA)["loss"].backward()
        opt.step()

    return step


def floor_steps(step, batches: list[torch.Tensor]) -> list[float]:
    times = []
    for x in batches:
        t = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t)
    return times


def overhead_section(cases, grid, batch: int, reps: int, cache_dir: Path, threads: int) -> Section:
    """ours vs floor only, both on a FRESH model every epoch (symmetric warm-up), ``reps`` interleaved pairs."""
    from SkullVAELib.data.dataset import build_cache

    volumes = build_cache(cases, grid, cache_dir=cache_dir).volumes
    n_steps = len(cases) // batch
    cl_batches = [
        volumes[i : i + batch].float().contiguous(memory_format=torch.channels_last_3d)
        for i in range(0, n_steps * batch, batch)
    ]
    ours, floor = [], []
    with tempfile.TemporaryDirectory(prefix="skullvae-bench-overhead-") as tmp:
        for r in range(reps):
            ours.append(ours_steps(volumes, grid, batch, True, Path(tmp) / f"o{r}"))
            floor.append(floor_steps(floor_parts(grid, channels_last=True), cl_batches))
            print("overhead", r, ours[-1], floor[-1], flush=True)
    epoch_ours, epoch_floor = min(e for _, e in ours), min(sum(f) for f in floor)
    steady_ours = statistics.median(t for steps, _ in ours for t in steps[1:]) * n_steps
    steady_floor = statistics.median(t for steps in floor for t in steps[1:]) * n_steps
    section = Section("train_overhead", "1b. Data-path overhead: ours vs compute floor, symmetric", threads)
    section.add(
        f"{len(cases)} SkullFix volumes at {'×'.join(map(str, grid))}, batch {batch}, {reps} interleaved pairs; "
        "both variants start from a fresh model every epoch (so both pay the first-step warm-up). "
        "'steady' = median step time excluding each epoch's first step × steps per epoch.\n\n"
        + table(
            ["measure", "ours s/epoch", "floor s/epoch", "overhead (ours/floor − 1)"],
            [
                [
                    "best epoch",
                    f"{epoch_ours:.2f}",
                    f"{epoch_floor:.2f}",
                    f"**{100 * (epoch_ours / epoch_floor - 1):+.1f} %**",
                ],
                [
                    "steady",
                    f"{steady_ours:.2f}",
                    f"{steady_floor:.2f}",
                    f"**{100 * (steady_ours / steady_floor - 1):+.1f} %**",
                ],
            ],
        )
    )
    return section


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--volumes", type=int, default=16, help="complete skulls 000.. used (one epoch = all of them)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference pipeline")
    p.add_argument("--grid", type=grid_arg, default=(128, 128, 64), help="grid timed with full epochs")
    p.add_argument("--epochs", type=int, default=2, help="full epochs per variant at --grid")
    p.add_argument("--grid-steps", nargs="*", default=["256,256,128:2"],
                   help="GRID:STEPS grids timed by STEPS steady-state steps (+1 warm-up), extrapolated")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "skullvae-bench-cache")
    p.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    p.add_argument(
        "--overhead-only",
        type=int,
        default=0,
        metavar="REPS",
        help="only the symmetric ours-vs-floor overhead run at --grid, REPS pairs (own section)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from SkullVAELib.data.dataset import build_cache, discover_cases

    cases = [c for c in discover_cases(args.data) if c.label == "complete"][: args.volumes]
    files = [c.path for c in cases]
    steps_per_epoch = len(cases) // args.batch
    if args.overhead_only:
        section = overhead_section(
            cases, tuple(args.grid), args.batch, args.overhead_only, args.cache_dir, args.threads
        )
        if not args.no_write:
            section.write()
        return
    section = Section("train_throughput", "1. Training throughput: reference-style pipeline vs ours vs compute floor",
                      args.threads)  # fmt: skip
    section.add(
        f"{len(cases)} SkullFix complete skulls ({cases[0].case_id}–{cases[-1].case_id}), batch {args.batch} "
        f"({steps_per_epoch} steps per epoch), β = {BETA:g}, Adam. Reference: MONAI LoadImaged (NrrdReader: the `itk` "
        f"package is not installed) + EnsureChannelFirstd + Resized(nearest), DataLoader with {args.workers} worker(s), "
        "MONAI VarAutoEncoder (paper arguments, 2-channel softmax head), 80·DiceLoss(to_onehot_y, softmax, sum) + β·KLD. "
        "Ours: build_cache (area mode, float16 in memory) + trainer.train_stage1 (TrainConfig(channels_last=True); "
        "the channels-first row is `--channels-first`). Floor: our VAE + vae_loss + Adam on in-memory float32 "
        "batches in the same layout. Times in seconds per epoch; ratio = reference / ours."
    )
    plans = [(tuple(args.grid), args.epochs, None)]
    for spec in args.grid_steps:
        g, s = spec.split(":")
        plans.append((grid_arg(g), 0, int(s)))

    rows = []
    for grid, epochs, steps in plans:
        g = "×".join(map(str, grid))
        t = time.perf_counter()
        data = build_cache(cases, grid, cache_dir=args.cache_dir)
        cache_s = time.perf_counter() - t
        volumes = data.volumes
        batches = [volumes[i : i + args.batch].float() for i in range(0, steps_per_epoch * args.batch, args.batch)]
        cl_batches = [b.contiguous(memory_format=torch.channels_last_3d) for b in batches]
        ref = reference_parts(files, grid, args.batch, args.workers)
        floor = floor_parts(grid, channels_last=True)
        results: dict[str, list] = {"reference": [], "ours": [], "ours_cf": [], "floor": []}
        with tempfile.TemporaryDirectory(prefix="skullvae-bench-train-") as tmp:
            if epochs:  # full epochs, interleaved
                for e in range(epochs):
                    results["reference"].append(sum(reference_steps(ref, None)))
                    results["ours"].append(ours_steps(volumes, grid, args.batch, True, Path(tmp) / f"cl{e}")[1])
                    if e == 0:
                        results["ours_cf"].append(ours_steps(volumes, grid, args.batch, False, Path(tmp) / "cf")[1])
                    results["floor"].append(sum(floor_steps(floor_parts(grid, channels_last=True), cl_batches)))
                    print(g, e, {k: v[-1] for k, v in results.items() if v}, flush=True)
                per_epoch = {k: min(v) for k, v in results.items() if v}
                label = f"measured, best of {epochs} epoch(s)"
            else:  # warm-up + steps, extrapolated to an epoch
                n = steps + 1
                vol_n = volumes[: n * args.batch]
                results["reference"] = reference_steps(ref, n)[1:]
                results["ours"] = ours_steps(vol_n, grid, args.batch, True, Path(tmp) / "cl")[0][1:]
                results["floor"] = floor_steps(floor, (cl_batches * n)[:n])[1:]
                per_epoch = {k: statistics.mean(v) * steps_per_epoch for k, v in results.items() if v}
                label = f"**extrapolated** from {steps} steady step(s) after 1 warm-up × {steps_per_epoch}"
        del ref, floor, batches, cl_batches
        overhead = per_epoch["ours"] / per_epoch["floor"] - 1
        rows.append([
            g, label, f"{per_epoch['reference']:.1f}", f"{per_epoch['ours']:.1f}",
            f"{per_epoch['ours_cf']:.1f}" if "ours_cf" in per_epoch else "–", f"{per_epoch['floor']:.1f}",
            f"**{per_epoch['reference'] / per_epoch['ours']:.2f}×**", f"**{100 * overhead:+.1f} %**",
            f"{cache_s:.1f}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    section.add(
        table(
            [
                "grid",
                "how",
                "reference s/epoch",
                "ours s/epoch",
                "ours channels-first s/epoch",
                "floor s/epoch",
                "ours vs reference",
                "data-path overhead (ours/floor − 1)",
                "cache load/build s (once)",
            ],
            rows,
        )  # fmt: skip
    )
    section.add(
        "Targets: ours ≥ 1.4× faster per epoch than the reference; overhead ≤ 10 %. The cache column is the "
        "one-off `build_cache` time of this run (a reload when the cache already existed; a first build is "
        "≈ 1 s per SkullFix case, see the cache section)."
    )
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
