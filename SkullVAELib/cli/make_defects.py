"""`skullvae make-defects`: cut cranial or facial defects from a folder of complete skulls.

Writes ``OUT/defective_skull/`` + ``OUT/implant/`` (cranial) or
``OUT/facial_defective_skull/`` + ``OUT/facial_implant/`` (facial), same file names and
exact geometry as the inputs. Each case's seed comes from ``--seed`` and its id, so the
result does not depend on the order or on which other cases are in the folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, make_progress
from SkullVAELib.defects import CRANIAL_STYLES, case_seed, cranial_defect, facial_defect
from SkullVAELib.errors import SkullVAEError
from SkullVAELib.image import SkullImage

IMAGE_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")
#: kind → (defective folder, implant folder) in the data set layout.
OUTPUT_FOLDERS = {"cranial": ("defective_skull", "implant"), "facial": ("facial_defective_skull", "facial_implant")}


def split_case_name(path: Path) -> tuple[str, str] | None:
    """(case id, suffix) of an image file name, or None if it is not an image we read."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix) and not name.startswith("."):
            return name[: -len(suffix)], name[len(name) - len(suffix) :]
    return None


def list_complete_skulls(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` (or of ``folder/complete_skull/`` when that exists), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SkullVAEError("not a folder of complete skulls", folder)
    if (folder / "complete_skull").is_dir():
        folder = folder / "complete_skull"
    files = sorted(p for p in folder.iterdir() if p.is_file() and split_case_name(p) is not None)
    if not files:
        raise SkullVAEError(f"no skull images ({', '.join(IMAGE_SUFFIXES)}) in this folder", folder)
    return files


def write_defect_pair(
    complete: SkullImage, file_name: str, kind: str, out: str | Path, seed: int, style: str = "skullfix"
) -> tuple[SkullImage, SkullImage]:
    """Cut one defect (per-case seed from ``seed`` and the case id) and write both halves."""
    from SkullVAELib.image import write_mask

    case_id = split_case_name(Path(file_name))[0]
    per_case = case_seed(seed, case_id)
    if kind == "cranial":
        defective, implant = cranial_defect(complete, per_case, style=style)
    else:
        defective, implant = facial_defect(complete, per_case)
    defective_dir, implant_dir = OUTPUT_FOLDERS[kind]
    write_mask(defective, Path(out) / defective_dir / file_name)
    write_mask(implant, Path(out) / implant_dir / file_name)
    return defective, implant


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-defects",
        help="cut cranial or facial defects from a folder of complete skulls",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--complete", required=True, help="folder of complete skulls (or a data set with complete_skull/)")
    p.add_argument("--kind", required=True, choices=tuple(OUTPUT_FOLDERS), help="defect kind")
    p.add_argument("--out", required=True, help="data set folder to write the defective skulls and implants into")
    p.add_argument("--seed", type=int, default=0, help="run seed; each case's seed derives from it and the case id")
    p.add_argument(
        "--style", choices=CRANIAL_STYLES, default="skullfix", help="cranial defect shape (default skullfix)"
    )
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.image import read_skull

    if args.seed < 0:
        raise SkullVAEError(f"--seed must be a non-negative integer, got {args.seed}")
    files = list_complete_skulls(args.complete)
    progress = make_progress(args.progress)
    total_fraction = 0.0
    try:
        for n, path in enumerate(files):
            progress("make-defects", n / len(files), path.name)
            complete = read_skull(path)
            defective, implant = write_defect_pair(complete, path.name, args.kind, args.out, args.seed, args.style)
            total_fraction += implant.mask.sum() / max(int(complete.mask.sum()), 1)
        progress("make-defects", 1.0, f"{len(files)} cases")
    finally:
        if hasattr(progress, "close"):
            progress.close()
    defective_dir, implant_dir = OUTPUT_FOLDERS[args.kind]
    out = Path(args.out)
    print(
        f"{len(files)} {args.kind} defects (mean implant {100 * total_fraction / len(files):.1f}% of the bone) -> "
        f"{out / defective_dir}, {out / implant_dir}"
    )
    return 0
