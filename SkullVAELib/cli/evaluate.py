"""`skullvae evaluate`: run a model on held-out cases and write the evaluation report."""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, float_list_arg, make_progress
from SkullVAELib.dataset import parse_id_spec
from SkullVAELib.errors import SkullVAEError


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
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument(
        "--resample", choices=("area", "nearest"), default="area", help="grid resampling (nearest = the paper's)"
    )
    parser.add_argument(
        "--gammas", type=float_list_arg, default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5], help="γ values of the sweep figure"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="model-grid cache for the training latents")
    parser.add_argument("--permutations", type=int, default=500, help="permutations of the MMD test")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def recorded_train_ids(bundle) -> list[str] | None:
    """Ids the model has seen: ``info["train_case_ids"]`` (training) ∪ the ids its centroids
    were fitted on (``completion_info["case_ids"]``); None when neither is recorded."""
    seen: list[str] = []
    found = False
    for ids in (bundle.info.get("train_case_ids"), (bundle.completion_info or {}).get("case_ids")):
        if ids is None:
            continue
        found = True
        seen += parse_id_spec([str(i) for i in ids] if isinstance(ids, list | tuple) else str(ids)) or []
    return sorted(set(seen)) if found else None


def select_cases(cases, test_spec, train_spec, recorded, max_cases=None):
    """(test_cases, train_cases, test_ids) from the discovered cases; SkullVAEError on overlap."""
    available = sorted({c.case_id for c in cases})
    test_ids = parse_id_spec(test_spec)
    if test_ids is None:
        if recorded is None:
            raise SkullVAEError("the model does not record its training cases; give the held-out ids with --test-ids")
        test_ids = [i for i in available if i not in set(recorded)]
    if recorded is not None:
        seen = sorted(set(test_ids) & set(recorded))
        if seen:
            raise SkullVAEError(
                f"refusing to evaluate completion on {len(seen)} case id(s) the model trained on "
                f"({', '.join(seen[:5])}{' ...' if len(seen) > 5 else ''}); choose held-out --test-ids"
            )
    train_ids = parse_id_spec(train_spec)
    if train_ids is not None:
        seen = sorted(set(test_ids) & set(train_ids))
        if seen:
            raise SkullVAEError(f"--test-ids and --train-ids share {', '.join(seen[:5])}")
    elif recorded is not None:
        train_ids = recorded
    missing = [i for i in test_ids if i not in set(available)]
    test_ids = [i for i in test_ids if i in set(available)]
    if not test_ids:
        raise SkullVAEError(f"none of the test ids ({', '.join(missing[:5])} ...) is in the data folders")
    if max_cases is not None:
        if max_cases <= 0:
            raise SkullVAEError(f"--max-cases must be positive, got {max_cases}")
        test_ids = test_ids[:max_cases]
    test_cases = [c for c in cases if c.case_id in set(test_ids)]
    train_cases = [c for c in cases if train_ids and c.case_id in set(train_ids)]
    return test_cases, train_cases, test_ids


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.dataset import discover_cases
    from SkullVAELib.evaluation import evaluate
    from SkullVAELib.report import write_report

    if args.out.exists() and not args.out.is_dir():
        raise SkullVAEError("exists and is not a folder", args.out)
    if args.permutations < 1:
        raise SkullVAEError(f"--permutations must be positive, got {args.permutations}")
    bundle = ModelBundle.load(args.model)
    if not bundle.centroids:
        raise SkullVAEError("model has no completion data; run skullvae fit-completion first", args.model)
    cases = discover_cases(args.data)
    recorded = recorded_train_ids(bundle)
    test_cases, train_cases, test_ids = select_cases(cases, args.test_ids, args.train_ids, recorded, args.max_cases)
    progress = make_progress(args.progress)
    try:
        result = evaluate(
            bundle,
            test_cases,
            train_cases or None,
            grid_mode=args.resample,
            device=args.device,
            progress=progress,
            cache_dir=args.cache_dir,
            n_permutations=args.permutations,
        )
        log = args.model / "training_log.csv"
        path = write_report(
            result,
            bundle,
            args.out,
            train_log_csv=log if log.is_file() else None,
            gammas=args.gammas,
            device=args.device,
            progress=progress,
        )
    finally:
        if hasattr(progress, "close"):
            progress.close()
    t1 = result.table1["original"]
    print(
        f"wrote {path} ({len(test_cases)} volumes, ids {test_ids[0]}..{test_ids[-1]}); CMP DSC cranial "
        f"{t1['cmp']['cranial']:.4f}, facial {t1['cmp']['facial']:.4f} (original resolution)"
    )
    return 0
