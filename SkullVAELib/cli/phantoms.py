"""`skullvae phantoms`: write a cohort of procedural skull phantoms as a data set.

Writes ``OUT/complete_skull/phantom_000.nrrd`` ...; with ``--with-defects`` also
``defective_skull/`` + ``implant/`` (cranial) and ``facial_defective_skull/`` +
``facial_implant/`` (facial), so the cohort is a complete data set (docs/ARCHITECTURE.md).
A data set already in ``OUT`` is replaced only with ``--overwrite``; nothing is written on an error.
"""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import add_progress_arg, close_progress, grid_arg, make_progress
from SkullVAELib.data.defects import CRANIAL_STYLES


def spacing_arg(text: str) -> tuple[float, float, float]:
    """Parse "1.6" or "1.6,1.6,2.0" (mm) for argparse ``type=``."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing must be one or three numbers in mm, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0 < v < 100 for v in values):
        raise argparse.ArgumentTypeError(f"spacing must be one or three positive numbers in mm, got {text!r}")
    return tuple(values)  # type: ignore[return-value]


def register(subparsers) -> None:
    p = subparsers.add_parser("phantoms", help="write a cohort of procedural skull phantoms (a data set)")
    p.add_argument("--n", type=int, required=True, help="number of phantoms")
    p.add_argument("--out", required=True, help="data set folder (complete_skull/ is written inside)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (the same seed gives the same cohort)")
    p.add_argument("--shape", type=grid_arg, default=(128, 128, 96), help="grid I,J,K in voxels (default 128,128,96)")
    p.add_argument(
        "--spacing",
        type=spacing_arg,
        default=None,
        help="voxel size in mm, one or three numbers (default: fit the grid to a 204.8×204.8×153.6 mm field of view)",
    )
    p.add_argument("--with-defects", action="store_true", help="also write cranial and facial defects and implants")
    p.add_argument(
        "--style", choices=CRANIAL_STYLES, default="skullfix", help="cranial defect shape (with --with-defects)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set already in --out (its phantom_NNN files; other files are kept)",
    )
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import make_phantom_set

    progress = make_progress(args.progress)
    try:
        made = make_phantom_set(
            args.n,
            args.out,
            args.seed,
            args.shape,
            args.spacing,
            args.with_defects,
            args.style,
            progress,
            overwrite=args.overwrite,
        )
    finally:
        close_progress(progress)
    folders = ", ".join(f"{f}/" for f in made.folders)
    print(f"{made.n} phantoms (bone {min(made.bone_cm3):.0f}-{max(made.bone_cm3):.0f} cm³) -> {made.out} ({folders})")
    return 0
