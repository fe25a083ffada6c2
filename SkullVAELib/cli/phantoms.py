"""`skullvae phantoms`: write a cohort of procedural skull phantoms as a data set.

Writes ``OUT/complete_skull/phantom_000.nrrd`` ...; with ``--with-defects`` also
``defective_skull/`` + ``implant/`` (cranial) and ``facial_defective_skull/`` +
``facial_implant/`` (facial), so the cohort is a complete data set (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, grid_arg, make_progress
from SkullVAELib.defects import CRANIAL_STYLES
from SkullVAELib.errors import SkullVAEError


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
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.cli.make_defects import write_defect_pair
    from SkullVAELib.image import write_mask
    from SkullVAELib.phantoms import make_phantom, phantom_seeds

    if args.n < 1:
        raise SkullVAEError(f"--n must be at least 1, got {args.n}")
    if args.seed < 0:
        raise SkullVAEError(f"--seed must be a non-negative integer, got {args.seed}")
    out = Path(args.out)
    progress = make_progress(args.progress)
    volumes = []
    try:
        for n, subject_seed in enumerate(phantom_seeds(args.n, args.seed)):
            name = f"phantom_{n:03d}.nrrd"
            progress("phantoms", n / args.n, name)
            image = make_phantom(subject_seed, args.shape, args.spacing)
            write_mask(image, out / "complete_skull" / name)
            volumes.append(image.mask.sum() * image.voxel_volume_mm3 / 1000.0)
            if args.with_defects:
                write_defect_pair(image, name, "cranial", out, args.seed, args.style)
                write_defect_pair(image, name, "facial", out, args.seed)
        progress("phantoms", 1.0, f"{args.n} phantoms")
    finally:
        if hasattr(progress, "close"):
            progress.close()
    written = "complete_skull/" + (
        ", defective_skull/, implant/, facial_defective_skull/, facial_implant/" if args.with_defects else ""
    )
    print(f"{args.n} phantoms (bone {min(volumes):.0f}-{max(volumes):.0f} cm³) -> {out} ({written})")
    return 0
