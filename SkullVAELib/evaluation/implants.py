"""The implant evaluation protocol (issue 9): per defect type, per method, at original resolution.

Defect types of one skull (case id):
- ``cranial``: SkullFix's own defect (``defective_skull/ID`` + ``implant/ID``);
- ``vault``: a cranial defect at a random place on the vault, cut from the complete skull by
  ``defects.cranial_defect(style="skullbreak")`` with ``defects.case_seed(seed, ID)``;
- ``irregular``: the same with ``style="irregular"`` (an irregular outline cut along the normal);
  a seed draws the same vault site as for ``vault`` (unless a draw is retried): they differ in shape;
- ``facial``: ``defects.facial_defect`` with ``case_seed(seed, ID)``.

Methods: an ordered chain of implant sources joined by "+", run through the product's own
:class:`~SkullVAELib.pipeline.completer.Completer` (the same code as ``skullvae complete``):
``rimfit`` (the geometric rim fit, no model; ``--no-mirror`` switches its mirror cue off),
``learned`` (the facial U-Net), ``atlas`` (registered training skulls), ``model`` (the paper's
latent arithmetic), and chains such as ``rimfit+learned`` (``skullvae complete``'s default order).

Per case: implant DSC, bDSC (10 mm), HD95 (pooled, mm), completed-skull DSC (patient bone ∪
implant vs complete skull), implant volume, seconds. Summaries: mean, median and a bootstrap
95 % interval of the mean (``scipy.stats.bootstrap``, percentile, 2000 resamples, seed 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from SkullVAELib.core.config import DEFECTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.layout import IMPLANT_FOLDERS, LABEL_FOLDERS
from SkullVAELib.evaluation.metrics import dice, implant_metrics
from SkullVAELib.io.image import SkullImage, check_same_grid, read_skull

DEFECT_TYPES = ("cranial", "vault", "irregular", "facial")
VAULT_STYLES = {"vault": "skullbreak", "irregular": "irregular"}  # drawn cranial defects: their style
METHODS = ("rimfit", "learned", "atlas", "model", "rimfit+learned", "rimfit+atlas", "rimfit+model")  # examples
METRICS = ("dsc", "bdsc", "hd95", "skull_dsc")


@dataclass
class DefectCase:
    """One evaluation case: the defective skull, its true implant and the complete skull mask."""

    case_id: str
    defect: str  # "cranial" (SkullFix), "vault" (random, skullbreak style), "irregular" or "facial"
    seed: int | None
    defective: SkullImage
    implant: np.ndarray
    complete: np.ndarray


def find_case_file(folder: Path, case_id: str) -> Path | None:
    """The image file of ``case_id`` in ``folder`` (any of the layout's extensions), or None."""
    from SkullVAELib.data.dataset import _files_by_id

    return _files_by_id(folder).get(case_id) if folder.is_dir() else None


def defect_cases(
    roots: str | Path | Sequence[str | Path],
    case_ids: Sequence[str],
    defect_types: Sequence[str] = DEFECT_TYPES,
    seeds: Sequence[int] = (0,),
) -> Iterator[DefectCase]:
    """The cases of ``roots`` (SkullFix layout: complete_skull/, defective_skull/, implant/), lazily.

    Each id is read from the first root that has ``complete_skull/ID``.
    """
    from SkullVAELib.data.defects import case_seed, cranial_defect, facial_defect

    roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]
    bad = [d for d in defect_types if d not in DEFECT_TYPES]
    if bad:
        raise SkullVAEError(f"unknown defect type(s) {', '.join(bad)}; choose from {', '.join(DEFECT_TYPES)}")
    for cid in case_ids:
        found = [(r, find_case_file(r / LABEL_FOLDERS["complete"], cid)) for r in roots]
        found = [(r, p) for r, p in found if p is not None]
        if not found:
            raise SkullVAEError(f"case {cid}: no complete_skull/{cid}.* (needed as ground truth)", roots[0])
        root, complete_path = found[0]
        complete = read_skull(complete_path, kind="binary")
        for defect in defect_types:
            if defect == "cranial":
                folder, implants = root / LABEL_FOLDERS["cranial"], root / IMPLANT_FOLDERS["cranial"]
                d_path, i_path = find_case_file(folder, cid), find_case_file(implants, cid)
                if d_path is None:
                    continue
                defective = read_skull(d_path, kind="binary")
                check_same_grid(defective, complete, d_path, "the complete skull")
                if i_path is not None:
                    implant_image = read_skull(i_path, kind="binary")
                    check_same_grid(implant_image, defective, i_path, "the defective skull")
                    truth = implant_image.mask
                else:
                    truth = complete.mask & ~defective.mask
                yield DefectCase(cid, defect, None, defective, truth, complete.mask)
                continue
            for seed in seeds:
                s = case_seed(int(seed), cid)
                if defect in VAULT_STYLES:
                    defective, implant = cranial_defect(complete, s, style=VAULT_STYLES[defect])
                else:
                    defective, implant = facial_defect(complete, s)
                yield DefectCase(cid, defect, int(seed), defective, implant.mask, complete.mask)


def method_sources(method: str) -> tuple[str, ...]:
    """ "rimfit+learned" -> ("rimfit", "learned"): a method is an ordered chain of implant sources."""
    from SkullVAELib.pipeline.settings import check_sources

    return check_sources(method.split("+"))


def method_completers(methods: Sequence[str], settings, folder=None) -> dict:
    """{(method, defect kind): Completer}: one per method and kind ("cranial", "facial"), sharing one
    model folder (its parts load once)."""
    import dataclasses

    from SkullVAELib.pipeline.completer import Completer

    folder = folder or settings.model_folder()
    out = {}
    for method in methods:
        for kind in DEFECTS:
            chosen = dataclasses.replace(settings, sources=method_sources(method), defect=kind)
            out[(method, kind)] = Completer(chosen, folder)
    return out


def predict(completer, case: DefectCase) -> tuple[np.ndarray, dict, list[str], str]:
    """(implant bool (I, J, K), timings, messages, source) of ``completer`` on ``case``; a method
    with no source for the case (e.g. ``rimfit`` on a facial defect) is an honest empty row."""
    try:
        result = completer.complete(case.defective)
    except SkullVAEError as exc:
        return np.zeros(case.defective.shape, dtype=bool), {}, [exc.message], "none"
    messages = list(result.warnings) + [f"{k}: {v}" for k, v in result.skipped.items()]
    return result.implant.mask, result.timings, messages, result.source


def score(pred: np.ndarray, case: DefectCase) -> dict[str, float]:
    """Implant DSC, bDSC (10 mm), HD95 (mm), completed-skull DSC, volume (ml), empty flag."""
    sk = case.defective
    m = implant_metrics(pred, case.implant, sk.mask, sk.spacing, 10.0)
    return {
        "dsc": m["dsc"],
        "bdsc": m["bdsc"],
        "hd95": m["hd95"],
        "skull_dsc": dice(sk.mask | pred, case.complete),
        "volume_ml": float(np.count_nonzero(pred)) * sk.voxel_volume_mm3 / 1000.0,
        "true_volume_ml": float(np.count_nonzero(case.implant)) * sk.voxel_volume_mm3 / 1000.0,
        "empty": float(not pred.any()),
    }


def run_protocol(
    root: str | Path | Sequence[str | Path],
    case_ids: Sequence[str],
    methods: Sequence[str] = ("rimfit",),
    defect_types: Sequence[str] = ("cranial", "vault"),
    seeds: Sequence[int] = (0,),
    settings=None,
    progress=None,
    folder=None,
) -> list[dict]:
    """One row per (case, defect, seed, method): the :func:`score` metrics plus seconds, source and messages.

    ``settings``: the :class:`~SkullVAELib.pipeline.settings.CompletionSettings` every method starts from
    (default: no model); each method replaces its sources and the defect kind of the case.
    """
    from SkullVAELib.pipeline.settings import CompletionSettings

    completers = method_completers(methods, settings or CompletionSettings(), folder)
    rows = []
    # (case, method) runs at most: SkullFix's cranial defect once per id, a drawn one once per seed
    total = max(len(case_ids) * sum(1 if d == "cranial" else len(seeds) for d in defect_types) * len(methods), 1)
    for n, case in enumerate(defect_cases(root, case_ids, defect_types, seeds)):
        kind = "facial" if case.defect == "facial" else "cranial"
        for k, method in enumerate(methods):
            if progress is not None:
                fraction = (n * len(methods) + k) / total
                progress("evaluate implants", fraction, f"{case.defect} {case.case_id} {method}")
            t0 = time.perf_counter()
            pred, timings, messages, source = predict(completers[(method, kind)], case)
            seconds = time.perf_counter() - t0
            row = {"case_id": case.case_id, "defect": case.defect, "seed": case.seed, "method": method}
            row.update(score(pred, case))
            row["seconds"] = seconds  # the method's time, without scoring
            row["source"] = source
            row["timings"] = {k: round(v, 3) for k, v in timings.items()}
            row["messages"] = messages
            rows.append(row)
    return rows


def _bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    if values.size < 2 or np.allclose(values, values[0]):
        v = float(values[0]) if values.size else math.nan
        return v, v
    res = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", random_state=0)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise(rows: Sequence[dict]) -> dict:
    """{(method, defect): {metric: {"mean", "median", "ci_low", "ci_high", "n", "n_infinite"}, "n_empty"}}."""
    out: dict = {}
    for key in sorted({(r["method"], r["defect"]) for r in rows}):
        group = [r for r in rows if (r["method"], r["defect"]) == key]
        entry: dict = {"n_empty": int(sum(r["empty"] for r in group)), "n": len(group)}
        for metric in METRICS:
            arr = np.asarray([r[metric] for r in group], dtype=np.float64)
            finite = arr[np.isfinite(arr)]
            lo, hi = _bootstrap_ci(finite) if finite.size else (math.nan, math.nan)
            entry[metric] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "median": float(np.median(finite)) if finite.size else math.nan,
                "ci_low": lo,
                "ci_high": hi,
                "n": int(arr.size),
                "n_infinite": int(arr.size - finite.size),
            }
        out[key] = entry
    return out


def markdown_table(summary: dict, label: str = "") -> str:
    """One Markdown row per (method, defect): mean [95 % CI] (median) of each metric."""
    lines = [
        "| split | method | defect | n | implant DSC | bDSC (10 mm) | HD95 mm | skull DSC | empty |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (method, defect), e in summary.items():
        cells = []
        for metric in METRICS:
            s = e[metric]
            digits = 2 if metric == "hd95" else 3
            inf = f", {s['n_infinite']} inf" if s["n_infinite"] else ""
            cells.append(
                f"{s['mean']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}] "
                f"({s['median']:.{digits}f}{inf})"
            )
        lines.append(f"| {label} | {method} | {defect} | {e['n']} | " + " | ".join(cells) + f" | {e['n_empty']} |")
    return "\n".join(lines) + "\n"
