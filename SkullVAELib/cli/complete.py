"""`skullvae complete`: a defective skull in; completed skull + implant (.seg.nrrd), STL, map out.

Everything is checked and computed before the first file is written, so a bad input
writes nothing. ``--progress json`` prints one JSON object per line on stdout and ends
with ``{"stage": "done", "fraction": 1.0, "message": ..., "result": {...}}``.
The work is :func:`SkullVAELib.workflows.complete_files`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, add_resample_arg, close_progress, gamma_list, make_progress
from SkullVAELib.core.config import DEFECT_CHOICES, DEVICE_HELP, GAMMA_RANGE
from SkullVAELib.workflows.complete import DEFAULT_SAMPLES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "complete",
        help="complete a defective skull and design its implant",
        description="Complete a defective skull by latent arithmetic (z = μ + γ·DEV) and write the completed "
        "skull and the implant as a Slicer segmentation on the input's exact geometry.",
    )
    p.add_argument("--model", required=True, help="model bundle folder (with completion data for γ ≠ 0)")
    p.add_argument("--input", required=True, help="defective skull: binary mask or CT (.nrrd, .nii.gz, .mha, ...)")
    p.add_argument("--output", required=True, help="result segmentation (.seg.nrrd)")
    low, high = GAMMA_RANGE
    p.add_argument(
        "--gamma", default="1.0", help=f"γ in {low:g}..{high:g}, or a comma-separated sweep like 0,0.25,0.5,0.75,1,1.5"
    )
    p.add_argument("--defect", choices=DEFECT_CHOICES, default="auto")
    p.add_argument("--implant-stl", help="also write the implant surface (binary STL, LPS mm)")
    p.add_argument("--stl-frame", choices=("LPS", "RAS"), default="LPS", help="STL coordinates (Slicer reads LPS)")
    p.add_argument("--uncertainty", help="also write the bone frequency over K samples (float NRRD)")
    p.add_argument("--samples", type=int, default=None, help=f"K for --uncertainty (default {DEFAULT_SAMPLES})")
    p.add_argument(
        "--raw", action="store_true", help="completed skull = raw decoded skull (paper); default keeps input bone"
    )
    p.add_argument("--input-kind", choices=("auto", "binary", "ct"), default="auto")
    p.add_argument("--hu-threshold", type=float, default=300.0, help="bone threshold for CT input (HU)")
    p.add_argument("--threshold", type=float, default=0.5, help="bone probability threshold")
    p.add_argument("--min-island", type=float, default=100.0, help="drop implant pieces smaller than this (mm³)")
    p.add_argument("--max-distance", type=float, default=10.0, help="implant pieces must touch the skull within (mm)")
    add_resample_arg(p)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="network arithmetic: float32 (exact) or bfloat16 (about 2x faster on AVX-512-BF16/AMX CPUs and GPUs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the uncertainty samples")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cranial defects: fit the implant to the defect's rim at the original resolution (geometric, "
        "no training); --no-refine keeps the model's implant (the paper's method)",
    )
    p.add_argument(
        "--symmetry",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the rim fit use the skull's mirror image where it covers a one-sided hole (default on: "
        "validation 056-063, random vault defects, implant DSC 0.879 -> 0.912)",
    )
    _add_switchable_path(
        p,
        "atlas",
        "DIR",
        "atlas set (skullvae build-atlas) that fills defects the rim fit cannot, e.g. facial ones "
        "(default: MODEL/atlas when the bundle has one)",
        "keep the model's implant where the rim fit does not apply",
    )
    _add_switchable_path(
        p,
        "refiner",
        "FILE",
        "learned facial refiner (skullvae train-refiner) that builds facial implants, before the atlas "
        "set (default: MODEL/refiner.safetensors when the bundle has one)",
        "do not use the learned facial refiner (the atlas set, or the model, fills facial defects)",
    )
    p.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        metavar="N",
        help="test-time fit: N Adam steps fitting the latent code to the patient's own bone before the "
        "latent shift (0 = off, the paper; docs/RESULTS.md issue 9 has the measured effect)",
    )
    add_progress_arg(p)
    p.set_defaults(func=run)


def _add_switchable_path(parser, name: str, metavar: str, help_on: str, help_off: str) -> None:
    """``--NAME PATH`` (default None: the bundle's own, when it has one) or ``--no-NAME`` (False)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", type=Path, default=None, metavar=metavar, help=help_on)
    group.add_argument(f"--no-{name}", dest=name, action="store_false", help=help_off)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import complete_files

    gammas = gamma_list(args.gamma)
    progress = make_progress(args.progress)
    try:
        done = complete_files(
            args.model,
            args.input,
            args.output,
            gammas,
            defect=args.defect,
            implant_stl=args.implant_stl,
            stl_frame=args.stl_frame,
            uncertainty=args.uncertainty,
            samples=args.samples,
            raw=args.raw,
            input_kind=args.input_kind,
            hu_threshold=args.hu_threshold,
            threshold=args.threshold,
            min_island=args.min_island,
            max_distance=args.max_distance,
            resample=args.resample,
            device=args.device,
            threads=args.threads,
            precision=args.precision,
            seed=args.seed,
            refine=args.refine,
            symmetry=args.symmetry,
            fit_steps=args.fit_steps,
            progress=progress,
            atlas=args.atlas,
            refiner=args.refiner,
        )
    finally:
        close_progress(progress)
    for warning in done.warnings:
        print(f"skullvae complete: warning: {warning}", file=sys.stderr)
    if args.progress == "json":
        sys.stdout.write(json.dumps({"stage": "done", "fraction": 1.0, "message": done.message, "result": done.record}))
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    for s in done.results:
        print(f"wrote {s['output']} (γ = {s['gamma']:g}): implant {s['implant_volume_mm3'] / 1000:.1f} cm³")
    if done.record["montage"]:
        print(f"wrote {done.record['montage']}")
    print(done.message)
    return 0
