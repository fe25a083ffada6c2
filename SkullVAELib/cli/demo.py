"""`skullvae demo`: the whole pipeline on procedural phantoms, on the CPU, in minutes.

It runs the same CLI verbs a user runs (one code path): phantoms with defects → train
stage 1 (β-VAE) and stage 2 (decoupled decoder) → fit the completion centroids →
complete a held-back defective phantom → a .seg.nrrd, an implant STL and PNG previews.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from SkullVAELib.errors import SkullVAEError

# Demo sizes: small enough for < 10 minutes on 2 CPU cores, large enough to look like skulls.
DEMO_PHANTOM_SHAPE = "96,96,80"
DEMO_SPACING_MM = "2.2"
DEMO_PRESET = "demo"
# The paper's β = 100 (and even β = 1) drives every latent to the prior on a dozen 64×64×32
# phantoms (|DEV| < 0.01: nothing to complete with; docs/RESULTS.md shows the same on SkullFix).
# β = 0.01 keeps the latents informative; stage 2 still trains a decoupled decoder on them.
DEMO_BETA = 0.01
DEMO_LR = "1e-3"  # the paper's 1e-4 needs far more steps than a demo has


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on phantoms (CPU, a few minutes)")
    p.add_argument("--out", default="skullvae-demo", help="output folder (default: ./skullvae-demo)")
    p.add_argument("--n", type=int, default=12, help="number of phantom subjects (one is held back)")
    p.add_argument("--epochs", type=int, default=250, help="stage-1 epochs")
    p.add_argument("--epochs2", type=int, default=300, help="stage-2 (decoupled decoder) epochs")
    p.add_argument(
        "--beta",
        type=float,
        default=DEMO_BETA,
        help=f"stage-1 β (default {DEMO_BETA:g}; β = 100 collapses the posterior on a dozen phantoms, see docs/RESULTS.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _preview(defective_path: Path, seg_path: Path, png_path: Path) -> None:
    """Orthogonal projections: the defective input, and the completion with the implant in yellow."""
    from SkullVAELib.image import read_skull
    from SkullVAELib.preview import save_mip_png
    from SkullVAELib.segfile import read_segmentation

    defective = read_skull(defective_path)
    _, segments = read_segmentation(seg_path)
    completed = defective.with_mask(segments["Completed skull"])
    save_mip_png(
        [("defective input", defective, None), ("completed, implant in yellow", completed, segments["Implant"])],
        png_path,
    )


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.cli import main

    if args.n < 3:
        raise SkullVAEError(f"--n must be at least 3 (got {args.n})")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    data, model, result = out / "data", out / "model", out / "result"
    held_back = f"phantom_{args.n - 1:03d}"
    t0 = time.perf_counter()

    def call(argv: list[str]) -> None:
        code = main(argv)
        if code:
            raise SkullVAEError(f"demo step failed: skullvae {' '.join(argv)} (exit {code})")

    _step(f"1/5 phantoms: {args.n} subjects with cranial and facial defects -> {data}")
    call(
        [
            "phantoms",
            "--n",
            str(args.n),
            "--out",
            str(data),
            "--seed",
            str(args.seed),
            "--shape",
            DEMO_PHANTOM_SHAPE,
            "--spacing",
            DEMO_SPACING_MM,
            "--with-defects",
        ]
    )
    train_ids = ",".join(f"phantom_{i:03d}" for i in range(args.n - 1))

    _step(f"2/5 train stage 1 (β = {args.beta:g}) and stage 2 (decoupled decoder) -> {model}")
    call(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(model),
            "--stage",
            "all",
            "--preset",
            DEMO_PRESET,
            "--beta",
            str(args.beta),
            "--lr",
            DEMO_LR,
            "--epochs",
            str(args.epochs),
            "--epochs2",
            str(args.epochs2),
            "--seed",
            str(args.seed),
            "--train-ids",
            train_ids,
            "--cache-dir",
            str(out / "cache"),
        ]
    )

    _step("3/5 fit completion centroids (DEV vectors) on the training phantoms")
    call(
        [
            "fit-completion",
            "--model",
            str(model),
            "--data",
            str(data),
            "--train-ids",
            train_ids,
            "--cache-dir",
            str(out / "cache"),
        ]
    )

    _step(f"4/5 complete the held-back defective phantom {held_back}")
    for kind, folder in (("cranial", "defective_skull"), ("facial", "facial_defective_skull")):
        call(
            [
                "complete",
                "--model",
                str(model),
                "--input",
                str(data / folder / f"{held_back}.nrrd"),
                "--output",
                str(result / f"{kind}.seg.nrrd"),
                "--implant-stl",
                str(result / f"{kind}_implant.stl"),
                "--defect",
                "auto",
            ]
        )
        _preview(data / folder / f"{held_back}.nrrd", result / f"{kind}.seg.nrrd", result / f"{kind}.png")

    minutes = (time.perf_counter() - t0) / 60
    _step(f"5/5 done in {minutes:.1f} min. Outputs:")
    for path in sorted(p for p in out.rglob("*") if p.suffix in {".png", ".stl"} or p.name.endswith(".seg.nrrd")):
        print(f"  {path}")
    print(f"  model bundle: {model}")
    return 0
