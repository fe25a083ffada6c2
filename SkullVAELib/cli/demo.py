"""`skullvae demo`: the whole pipeline on procedural phantoms, on the CPU, in minutes.

The work is :func:`SkullVAELib.workflows.demo` (the same workflows the other verbs call):
phantoms with defects → train stage 1 (β-VAE) and stage 2 (decoupled decoder) → fit the
completion centroids → complete a held-back defective phantom → a .seg.nrrd, an implant STL
and PNG previews.
"""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import (
    add_progress_arg,
    close_progress,
    make_progress,
    non_negative_float,
    non_negative_int,
    positive_int,
    seed_arg,
    threads_arg,
)
from SkullVAELib.workflows.phantom_demo import DEMO_BETA

DESCRIPTION = (
    "Run the whole pipeline on procedural phantoms, on the CPU: write 12 phantom skulls with cranial and "
    "facial defects, train stage 1 (β-VAE) and stage 2 (decoupled decoder) on 11 of them, fit the "
    "completion centroids, and complete the held-back phantom's two defects into ./skullvae-demo/ "
    "(.seg.nrrd, implant STL, PNG previews). It prints its training plan with an "
    "estimated time, and the progress bars show the time left."
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on phantoms (CPU; it prints its time estimate first)",
        description=DESCRIPTION,
    )
    p.add_argument("--out", default="skullvae-demo", help="output folder (default: ./skullvae-demo)")
    p.add_argument("--n", type=positive_int, default=12, help="number of phantom subjects (one is held back)")
    p.add_argument("--epochs", type=non_negative_int, default=250, help="stage-1 epochs")
    p.add_argument("--epochs2", type=non_negative_int, default=300, help="stage-2 (decoupled decoder) epochs")
    p.add_argument(
        "--beta",
        type=non_negative_float,
        default=DEMO_BETA,
        help=f"stage-1 β (default {DEMO_BETA:g}; β = 100 collapses the posterior on a dozen phantoms, see docs/RESULTS.md)",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the phantoms and of the training")
    p.add_argument(
        "--threads", type=threads_arg, default=0, help="torch threads (0 = all cores; at most the CPU count)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set (OUT/data) or trained model (OUT/model) already in --out (refused without it)",
    )
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import demo

    progress = make_progress(args.progress)

    def log(line: str) -> None:
        close_progress(progress)  # a finished bar first, then the line
        print(line, flush=True)

    try:
        outputs = demo(
            args.out,
            args.n,
            args.epochs,
            args.epochs2,
            args.beta,
            args.seed,
            args.threads,
            progress=progress,
            log=log,
            overwrite=args.overwrite,
        )
    finally:
        close_progress(progress)
    for path in outputs.files:
        print(f"  {path}")
    print(f"  model bundle: {outputs.model}")
    return 0
