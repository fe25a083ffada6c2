"""`skullvae make-defects`: cut cranial or facial defects from a folder of complete skulls.

Writes ``OUT/defective_skull/`` + ``OUT/implant/`` (cranial) or
``OUT/facial_defective_skull/`` + ``OUT/facial_implant/`` (facial), same file names and
exact geometry as the inputs. Each case's seed comes from ``--seed`` and its id, so the
result does not depend on the order or on which other cases are in the folder.
"""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import add_progress_arg, close_progress, make_progress, seed_arg
from SkullVAELib.core.config import DEFECTS
from SkullVAELib.data.defects import CRANIAL_STYLES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-defects",
        help="cut cranial or facial defects from a folder of complete skulls",
        description=__doc__.split("\n\n")[1].replace("``", "") if __doc__ else None,  # no reST markup in --help
    )
    p.add_argument("--complete", required=True, help="folder of complete skulls (or a data set with complete_skull/)")
    p.add_argument("--kind", required=True, choices=DEFECTS, help="defect kind")
    p.add_argument("--out", required=True, help="data set folder to write the defective skulls and implants into")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="run seed; each case's seed derives from it and the case id"
    )
    p.add_argument(
        "--style", choices=CRANIAL_STYLES, default="skullfix", help="cranial defect shape (default skullfix)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace cases that already exist in --out")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import make_defect_set

    progress = make_progress(args.progress)
    try:
        made = make_defect_set(
            args.complete, args.kind, args.out, args.seed, args.style, progress, overwrite=args.overwrite
        )
    finally:
        close_progress(progress)
    print(
        f"{made.cases} {made.kind} defects (mean implant {100 * made.mean_implant_fraction:.1f}% of the bone) -> "
        f"{made.defective_dir}, {made.implant_dir}"
    )
    return 0
