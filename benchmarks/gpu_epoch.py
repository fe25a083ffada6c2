"""GPU: seconds per epoch of stage 1 and stage 2 at 256×256×128 (bf16) and the paper's protocol.

Runs ``trainer.train_stage1`` / ``train_stage2`` (``precision="bf16"``: bf16 autocast, the
data set held on the GPU, channels-last) on ``--volumes`` volumes for ``--epochs`` epochs each,
takes the fastest epoch of each stage (the first pays cuDNN autotuning), and projects the
paper's protocol: ``--protocol-volumes`` (300) volumes, 200 stage-1 + 1200 stage-2 epochs.
The training step reads nothing back to the host (loss sums stay on the GPU until the epoch
ends; Testing/Python/test_aggregated_vae.py counts the reads), so an epoch's time is the GPU's.
``--fused-adam`` and ``--compile`` measure the optional speed-ups, ``--augment`` the cost of
augmentation; ``--stage2-latent`` picks the paper's z ~ q(z|x) or the authors' fixed
z = μ + σ (float32 whatever the autocast).
Data: the SkullFix complete skulls from the cache (``build_cache``) when the folder exists,
otherwise random sparse volumes (timing only depends on the shapes). Needs a CUDA device.

    .venv/bin/python benchmarks/gpu_epoch.py --volumes 32 --epochs 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _report import SKULLFIX, Section, table

from SkullVAELib.cli.common import grid_arg


def volumes(data: Path, n: int, grid, cache_dir: Path) -> tuple[torch.Tensor, str]:
    if (data / "complete_skull").is_dir():
        from SkullVAELib.data.dataset import build_cache, discover_cases

        cases = discover_cases(data)[:n]
        cached = build_cache(cases, grid, cache_dir=cache_dir, workers=4)
        return cached.volumes, f"{len(cases)} SkullFix volumes (cached)"
    g = torch.Generator().manual_seed(0)
    return (torch.rand((n, 1, *grid), generator=g) > 0.9).half(), f"{n} random volumes"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", type=grid_arg, default=(256, 256, 128))
    p.add_argument("--volumes", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "skullvae-bench-cache")
    p.add_argument("--protocol-volumes", type=int, default=300)
    p.add_argument("--stage1-epochs", type=int, default=200)
    p.add_argument("--stage2-epochs", type=int, default=1200)
    p.add_argument("--compile", action="store_true", help="also torch.compile the trained modules")
    p.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (one kernel per step)")
    p.add_argument("--stage2-latent", choices=("sample", "mu_plus_sigma"), default="sample")
    p.add_argument("--augment", action="store_true", help="stage 1 with the default augmentation (train --augment)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--device", default="cuda", help="cuda (the measure) or cpu (a smoke test at a small --grid)")
    args = p.parse_args()
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("gpu_epoch.py needs a CUDA device (none found); see docs/BENCHMARKS.md section 5")
    from SkullVAELib.core.config import NetworkConfig, TrainConfig
    from SkullVAELib.data.augment import AugmentConfig, Augmenter
    from SkullVAELib.vae.networks import VAE, Decoder
    from SkullVAELib.vae.stages import train_stage1, train_stage2

    torch.backends.cudnn.benchmark = True
    data, what = volumes(args.data, args.volumes, args.grid, args.cache_dir)
    cfg_net = NetworkConfig(grid=args.grid)
    common = dict(epochs=args.epochs, batch_size=args.batch, device=args.device, precision="bf16", channels_last=True,
                  compile=args.compile, fused_adam=args.fused_adam, checkpoint_every=10**6,
                  checkpoint_minutes=10**6)  # fmt: skip
    torch.manual_seed(0)
    vae = VAE(cfg_net)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        augmenter = Augmenter(AugmentConfig(seed=0)) if args.augment else None
        h1 = train_stage1(
            vae, data, TrainConfig(stage=1, beta=100.0, **common), Path(tmp) / "s1", batch_transform=augmenter
        )
        wall1 = time.perf_counter() - t
        t = time.perf_counter()
        cfg2 = TrainConfig(stage=2, stage2_latent=args.stage2_latent, **common)
        h2 = train_stage2(vae.encoder, Decoder(cfg_net), data, cfg2, Path(tmp) / "s2")
        wall2 = time.perf_counter() - t
    e1, e2 = min(r["seconds"] for r in h1), min(r["seconds"] for r in h2)
    scale = args.protocol_volumes / data.shape[0]
    projected = scale * (args.stage1_epochs * e1 + args.stage2_epochs * e2)
    card = torch.cuda.get_device_name() if on_gpu else "CPU smoke test"
    memory = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else float("nan")
    section = Section("gpu_epoch", f"5. GPU epoch time and the paper's protocol ({card})")
    section.add(
        f"{what}, grid {'×'.join(map(str, args.grid))}, batch {args.batch}, {'bf16 autocast' if on_gpu else 'float32'}, channels-last"
        + (", torch.compile" if args.compile else "")
        + (", fused Adam" if args.fused_adam else "")
        + (", stage 1 augmented (defaults)" if args.augment else "")
        + f", stage 2 on {args.stage2_latent}, host-sync-free steps"
        + f"; fastest of {args.epochs} epochs; peak GPU memory {memory:.1f} GiB.\n\n"
        + table(
            ["stage", "s / epoch", "s / volume", "wall incl. warm-up s"],
            [["1 (β-VAE)", f"{e1:.2f}", f"{e1 / data.shape[0]:.3f}", f"{wall1:.1f}"],
             ["2 (decoupled decoder)", f"{e2:.2f}", f"{e2 / data.shape[0]:.3f}", f"{wall2:.1f}"]],
        )
        + f"\nProjected protocol ({args.protocol_volumes} volumes, {args.stage1_epochs} + {args.stage2_epochs} "
        f"epochs): **{projected / 3600:.2f} h** (target ≤ 1 h on one H100)."
    )  # fmt: skip
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
