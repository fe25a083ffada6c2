"""`skullvae evaluate`: run a model on held-out cases and write the evaluation report.

The work is :func:`SkullVAELib.workflows.evaluate_model`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import (
    add_progress_arg,
    add_resample_arg,
    add_rim_fit_cue_args,
    close_progress,
    gammas_arg,
    make_progress,
)
from SkullVAELib.core.config import DEVICE_HELP, GAMMAS

__all__ = ["register", "run"]  # recorded_train_ids and select_cases: the workflow's, see __getattr__


def __getattr__(name: str):
    """``recorded_train_ids`` / ``select_cases`` from the workflow, imported on first use (it loads torch;
    `skullvae evaluate --help` must not)."""
    if name in ("recorded_train_ids", "select_cases"):
        from SkullVAELib.workflows import evaluate as workflow

        return getattr(workflow, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    parser.add_argument(
        "--model",
        type=Path,
        help="model bundle folder (with centroids); optional with --implants-only and no vae method",
    )
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
    parser.add_argument(
        "--max-cases", type=int, default=None, help="evaluate only the first N test ids (quick runs; --implants too)"
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    add_resample_arg(parser)
    parser.add_argument("--gammas", type=gammas_arg, default=list(GAMMAS), help="γ values of the sweep figure")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model-grid cache for the training latents")
    parser.add_argument("--permutations", type=int, default=500, help="permutations of the MMD test")
    implants = parser.add_argument_group("implant ablation (issue 9: per defect type, at original resolution)")
    implants.add_argument(
        "--implants",
        help="comma-separated implant methods to compare; a method is a chain of implant sources joined by "
        "+ (rimfit, learned, atlas, model), e.g. rimfit,model,rimfit+learned; writes OUT/implants.md, .csv, .json",
    )
    implants.add_argument(
        "--atlas",
        type=Path,
        default=None,
        help="atlas set folder (skullvae build-atlas) for the atlas source (default MODEL/atlas)",
    )
    implants.add_argument(
        "--refiner",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="facial refiner (skullvae train-refiner) for the learned source (default MODEL/refiner*.safetensors); "
        "several times: an ensemble (the members' probabilities averaged)",
    )
    implants.add_argument(
        "--residual",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="cranial residual (skullvae train-residual) for the residual source (default "
        "MODEL/residual*.safetensors); several times: an ensemble (the members' shifts averaged)",
    )
    implants.add_argument(
        "--defects",
        default="cranial,vault,facial",
        help="defect types: cranial (the data set's own), vault (random vault places, SkullBreak-style "
        "generator), irregular (the same places, irregular outlines), facial (generated)",
    )
    add_rim_fit_cue_args(implants)
    implants.add_argument("--defect-seeds", default="0", help="seeds of the generated defects, e.g. 0,1,2")
    implants.add_argument("--implants-only", action="store_true", help="skip the paper's evaluation")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def _run_implants(args: argparse.Namespace, progress) -> None:
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows.implants import evaluate_implants

    test_ids = parse_id_spec(args.test_ids)
    if not test_ids:
        raise SkullVAEError("--implants needs --test-ids (e.g. 056-063 for validation, 064-079 for test)")
    if args.max_cases is not None:
        if args.max_cases <= 0:
            raise SkullVAEError(f"--max-cases must be positive, got {args.max_cases}")
        test_ids = test_ids[: args.max_cases]
    try:
        seeds = [int(s) for s in str(args.defect_seeds).split(",") if s.strip()]
    except ValueError:
        raise SkullVAEError(f"--defect-seeds must be comma-separated integers, got {args.defect_seeds!r}") from None
    summary, path = evaluate_implants(
        args.data,
        args.out,
        test_ids,
        [m.strip() for m in args.implants.split(",") if m.strip()],
        [d.strip() for d in args.defects.split(",") if d.strip()],
        seeds,
        model=args.model,
        device=args.device,
        progress=progress,
        atlas=args.atlas,
        refiner=args.refiner,
        mirror=args.mirror,
        shapes=args.shapes,
        residual=args.residual,
    )
    for (method, defect), entry in summary.items():
        print(
            f"{method:>20} {defect:>8}: implant DSC {entry['dsc']['mean']:.3f}, bDSC {entry['bdsc']['mean']:.3f}, "
            f"HD95 {entry['hd95']['mean']:.2f} mm, skull DSC {entry['skull_dsc']['mean']:.4f}, "
            f"{entry['n_empty']}/{entry['n']} empty"
        )
    print(f"wrote {path}")


def _refuse_paper_only_options(args: argparse.Namespace) -> None:
    """--implants-only skips the paper's evaluation: its options would be ignored silently, so they are refused."""
    from SkullVAELib.core.errors import SkullVAEError

    given = [
        option
        for option, used in (
            ("--train-ids", args.train_ids is not None),
            ("--resample", args.resample is not None),
            ("--gammas", args.gammas != list(GAMMAS)),
            ("--cache-dir", args.cache_dir is not None),
            ("--permutations", args.permutations != 500),
        )
        if used
    ]
    if given:
        raise SkullVAEError(
            f"{', '.join(given)} only apply to the paper's evaluation, which --implants-only skips; leave them out"
        )


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.workflows import evaluate_model

    if args.implants_only and not args.implants:
        raise SkullVAEError("--implants-only needs --implants METHODS")
    if args.implants_only:
        _refuse_paper_only_options(args)
    progress = make_progress(args.progress)
    if args.implants:
        try:
            _run_implants(args, progress)
        finally:
            if args.implants_only:
                close_progress(progress)
        if args.implants_only:
            return 0
    if args.model is None:
        raise SkullVAEError("--model is required (or use --implants with --implants-only)")
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
