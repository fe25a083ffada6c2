"""`skullvae evaluate`: run a model on held-out cases and write the evaluation report.

The work is :func:`SkullVAELib.workflows.evaluate_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, add_resample_arg, close_progress, gammas_arg, make_progress
from SkullVAELib.config import DEVICE_HELP, GAMMAS
from SkullVAELib.workflows.evaluate import recorded_train_ids, select_cases

__all__ = ["recorded_train_ids", "register", "run", "select_cases"]  # the selection rules live in the workflow


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on held-out cases: DSC tables, implant metrics, Gaussianity, figures",
        description=(
            "Evaluate reconstruction (REC) and completion (CMP) on cases the model did not train on, "
            "with implant DSC, border DSC and HD95 at original resolution, the latent Gaussianity "
            "of the aggregate posterior and the paper's figures. Writes REPORT_DIR/report.md, "
            "metrics.csv, summary.json and PNGs. Refuses test ids that the model trained on."
        ),
    )
    parser.add_argument("--model", required=True, type=Path, help="model bundle folder (with centroids)")
    parser.add_argument("--data", required=True, type=Path, nargs="+", help="data folder(s), merged by case id")
    parser.add_argument("--out", required=True, type=Path, help="report folder to write")
    parser.add_argument(
        "--test-ids",
        help='held-out case ids, e.g. "064-079" or "064,070-072" (default: every id the model did not train on)',
    )
    parser.add_argument(
        "--train-ids",
        help="training case ids whose latents give the training-set Gaussianity and PCA "
        "(default: the ids recorded in the model, when present in --data)",
    )
    parser.add_argument("--max-cases", type=int, default=None, help="evaluate only the first N test ids (quick runs)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_resample_arg(parser)
    parser.add_argument("--gammas", type=gammas_arg, default=list(GAMMAS), help="γ values of the sweep figure")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model-grid cache for the training latents")
    parser.add_argument("--permutations", type=int, default=500, help="permutations of the MMD test")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import evaluate_model

    progress = make_progress(args.progress)
    try:
        result, path, test_ids = evaluate_model(
            args.model,
            args.data,
            args.out,
            test_ids=args.test_ids,
            train_ids=args.train_ids,
            max_cases=args.max_cases,
            device=args.device,
            resample=args.resample,
            gammas=args.gammas,
            cache_dir=args.cache_dir,
            permutations=args.permutations,
            progress=progress,
        )
    finally:
        close_progress(progress)
    t1 = result.table1["original"]
    print(
        f"wrote {path} ({len(result.test_cases)} volumes, ids {test_ids[0]}..{test_ids[-1]}); CMP DSC cranial "
        f"{t1['cmp']['cranial']:.4f}, facial {t1['cmp']['facial']:.4f} (original resolution)"
    )
    return 0
