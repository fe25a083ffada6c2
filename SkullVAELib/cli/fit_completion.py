"""`skullvae fit-completion`: class centroids of μ, DEV vectors and the defect classifier into a bundle."""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import add_progress_arg, add_resample_arg, close_progress, make_progress, positive_int
from SkullVAELib.core.config import DEVICE_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-completion",
        help="fit the class centroids (DEV vectors) and the defect classifier of a model",
        description="Encode the training skulls on the model's grid, store the class centroids of μ "
        "(complete, cranial, facial), the deviation vectors DEV = c_complete − c_defect and a defect-type "
        "classifier in the model bundle (completion.json).",
    )
    p.add_argument("--model", required=True, help="model bundle folder (updated in place)")
    p.add_argument("--data", required=True, nargs="+", help="data folder(s) (complete_skull/, defective_skull/, ...)")
    p.add_argument(
        "--train-ids",
        default=None,
        help="use only these case ids: comma list, ranges like 000-063, or a file with one id per line",
    )
    add_resample_arg(p)
    p.add_argument("--cache-dir", default=None, help="folder for the model-grid cache (reused across runs)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="volumes encoded at once")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import fit_completion_data

    progress = make_progress(args.progress)
    try:
        fitted = fit_completion_data(
            args.model,
            args.data,
            train_ids=args.train_ids,
            resample=args.resample,
            cache_dir=args.cache_dir,
            batch_size=args.batch_size,
            device=args.device,
            progress=progress,
        )
    finally:
        close_progress(progress)
    print(f"centroids of {fitted.cases} skulls: " + ", ".join(f"{k} {v}" for k, v in fitted.counts.items()))
    for defect, norm in fitted.dev_norms.items():
        print(f"|DEV_{defect}| = {norm:.4f}")
    if fitted.missing:
        print(f"no {' or '.join(fitted.missing)} cases: no DEV for {', '.join(fitted.missing)} defects")
    print(f"wrote {args.model}/completion.json")
    return 0
