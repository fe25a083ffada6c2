"""The evaluation workflow: held-out cases of a data set → metrics → report folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.config import GAMMAS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.data.case_ids import parse_id_spec


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


def evaluate_model(
    model: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    test_ids: str | Sequence[str] | None = None,
    train_ids: str | Sequence[str] | None = None,
    max_cases: int | None = None,
    device: str = "auto",
    resample: str | None = None,
    gammas: Sequence[float] = GAMMAS,
    cache_dir: str | os.PathLike | None = None,
    permutations: int = 500,
    progress: ProgressCallback | None = None,
):
    """Evaluate the bundle ``model`` on held-out cases and write ``out/report.md`` and its files.

    Refuses test ids the model trained on. ``resample`` None uses the model's own mode.
    Returns ``(EvaluationResult, report path, test ids)``.
    """
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.data.dataset import discover_cases
    from SkullVAELib.evaluation.report import write_report
    from SkullVAELib.evaluation.table1 import evaluate
    from SkullVAELib.io.outputs import check_output_folder
    from SkullVAELib.training.log import LOG_NAME

    model, out = Path(model), Path(out)
    check_output_folder(out, "--out")  # a file in the way or a read-only folder: before the work
    if permutations < 1:
        raise SkullVAEError(f"--permutations must be positive, got {permutations}")
    bundle = ModelBundle.load(model)
    bundle.require_completion(model)
    cases = discover_cases(data)
    recorded = recorded_train_ids(bundle)
    test_cases, train_cases, chosen = select_cases(cases, test_ids, train_ids, recorded, max_cases)
    result = evaluate(
        bundle,
        test_cases,
        train_cases or None,
        resample=resample,
        device=device,
        progress=progress,
        cache_dir=cache_dir,
        n_permutations=permutations,
    )
    log = model / LOG_NAME
    path = write_report(
        result,
        bundle,
        out,
        train_log_csv=log if log.is_file() else None,
        gammas=gammas,
        device=device,
        progress=progress,
    )
    return result, path, chosen
