"""`skullvae fit-completion`: class centroids of μ, DEV vectors and the defect classifier into a bundle."""

from __future__ import annotations

import argparse

import numpy as np

from SkullVAELib.cli.common import add_progress_arg, make_progress
from SkullVAELib.errors import SkullVAEError


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
    p.add_argument(
        "--grid-from-model",
        action="store_true",
        help="resample the data to the model's grid (always the case; kept for explicitness)",
    )
    p.add_argument("--resample", choices=("area", "nearest"), default="area")
    p.add_argument("--cache-dir", default=None, help="folder for the model-grid cache (reused across runs)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.centroids import fit_completion
    from SkullVAELib.completion import resolve_device
    from SkullVAELib.dataset import build_cache, discover_cases, select_cases

    if args.batch_size < 1:
        raise SkullVAEError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    bundle = ModelBundle.load(args.model, device="cpu")
    cases = select_cases(discover_cases(args.data), args.train_ids)
    progress = make_progress(args.progress)
    data = build_cache(cases, bundle.network.grid, cache_dir=args.cache_dir, mode=args.resample, progress=progress)
    progress("encode", 0.0, f"encoding {len(cases)} skulls")
    centroids = fit_completion(bundle, data, batch_size=args.batch_size, device=str(device))
    bundle.to("cpu")
    bundle.save_completion(args.model)
    progress("encode", 1.0, "done")
    if hasattr(progress, "close"):
        progress.close()
    counts = bundle.completion_info.get("counts", {})
    print(f"centroids of {len(cases)} skulls: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for defect in bundle.defect_classes:
        print(f"|DEV_{defect}| = {float(np.linalg.norm(bundle.dev(defect))):.4f}")
    missing = [d for d in ("cranial", "facial") if d not in centroids]
    if missing:
        print(f"no {' or '.join(missing)} cases: no DEV for {', '.join(missing)} defects")
    print(f"wrote {args.model}/completion.json")
    return 0
