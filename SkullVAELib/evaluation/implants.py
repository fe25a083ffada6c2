"""The implant evaluation protocol (issue 9): per defect type, per method, at original resolution.

Defect types of one skull (case id):
- ``cranial``: SkullFix's own defect (``defective_skull/ID`` + ``implant/ID``);
- ``vault``: a cranial defect at a random place on the vault, cut from the complete skull by
  ``defects.cranial_defect(style="skullbreak")`` with ``defects.case_seed(seed, ID)``;
- ``facial``: ``defects.facial_defect`` with ``case_seed(seed, ID)``.

Methods (the ablation; each stage switchable): ``vae`` (the model's implant), ``refine``
(geometric rim fit only, no model), ``refine+symmetry``, ``vae+refine``,
``vae+refine+symmetry`` (rim fit where it applies, the model's implant elsewhere), ``atlas``
(the multi-atlas implant only, :mod:`atlas`), ``refine+symmetry+atlas`` (rim fit where it
applies, the atlas implant elsewhere), ``learned`` (the learned facial refiner only,
:mod:`refiner`) and ``refine+symmetry+learned`` (rim fit where it applies, the learned refiner
for facial defects: ``skullvae complete``'s default with a refiner).

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

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.dataset import IMPLANT_FOLDERS, LABEL_FOLDERS
from SkullVAELib.evaluation.metrics import dice, implant_metrics
from SkullVAELib.io.image import SkullImage, read_skull

DEFECT_TYPES = ("cranial", "vault", "facial")
METHODS = (
    "vae",
    "refine",
    "refine+symmetry",
    "vae+refine",
    "vae+refine+symmetry",
    "atlas",
    "refine+symmetry+atlas",
    "learned",
    "refine+symmetry+learned",
)
METRICS = ("dsc", "bdsc", "hd95", "skull_dsc")


@dataclass
class DefectCase:
    """One evaluation case: the defective skull, its true implant and the complete skull mask."""

    case_id: str
    defect: str  # "cranial" (SkullFix), "vault" (random, skullbreak style) or "facial"
    seed: int | None
    defective: SkullImage
    implant: np.ndarray
    complete: np.ndarray


def _find(folder: Path, case_id: str) -> Path | None:
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
        found = [(r, _find(r / LABEL_FOLDERS["complete"], cid)) for r in roots]
        found = [(r, p) for r, p in found if p is not None]
        if not found:
            raise SkullVAEError(f"case {cid}: no complete_skull/{cid}.* (needed as ground truth)", roots[0])
        root, complete_path = found[0]
        complete = read_skull(complete_path, kind="binary")
        for defect in defect_types:
            if defect == "cranial":
                folder, implants = root / LABEL_FOLDERS["cranial"], root / IMPLANT_FOLDERS["cranial"]
                d_path, i_path = _find(folder, cid), _find(implants, cid)
                if d_path is None:
                    continue
                defective = read_skull(d_path, kind="binary")
                truth = read_skull(i_path, kind="binary").mask if i_path else complete.mask & ~defective.mask
                if defective.shape != complete.shape:
                    raise SkullVAEError(f"grid {defective.shape} differs from its complete skull", d_path)
                yield DefectCase(cid, defect, None, defective, truth, complete.mask)
                continue
            for seed in seeds:
                s = case_seed(int(seed), cid)
                if defect == "vault":
                    defective, implant = cranial_defect(complete, s, style="skullbreak")
                else:
                    defective, implant = facial_defect(complete, s)
                yield DefectCase(cid, defect, int(seed), defective, implant.mask, complete.mask)


def predict(
    method: str,
    case: DefectCase,
    bundle=None,
    device: str = "cpu",
    rimfit_cfg=None,
    atlas=None,
    atlas_cfg=None,
    refiner=None,
) -> tuple[np.ndarray, dict, list[str]]:
    """(implant bool (I, J, K), timings, messages) of ``method`` on ``case``.

    ``rimfit_cfg``: a RimFitConfig; ``atlas``: an AtlasSet (needed by the ``*atlas`` methods),
    ``atlas_cfg``: an AtlasConfig; ``refiner``: a FacialRefiner (needed by the ``*learned`` ones).
    """
    from SkullVAELib.implant.refine import refine_implant

    if method not in METHODS:
        raise SkullVAEError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method.endswith("atlas") and atlas is None:
        raise SkullVAEError(f"method {method!r} needs an atlas set (--atlas)")
    if method.endswith("learned") and refiner is None:
        raise SkullVAEError(f"method {method!r} needs a facial refiner (--refiner)")
    if method == "learned":
        learned = refiner(case.defective)
        return learned.implant, learned.timings, learned.messages
    if method == "atlas":
        from SkullVAELib.implant.atlas import atlas_implant

        fill = atlas_implant(case.defective, atlas, atlas_cfg)
        return fill.implant, fill.timings, fill.messages
    timings: dict[str, float] = {}
    model_implant = None
    kind = "facial" if case.defect == "facial" else "cranial"
    if method.startswith("vae"):
        if bundle is None:
            raise SkullVAEError(f"method {method!r} needs a model (--model)")
        from SkullVAELib.core.config import CompletionConfig
        from SkullVAELib.vae.completion import complete

        t0 = time.perf_counter()
        result = complete(case.defective, bundle, CompletionConfig(gamma=1.0, defect=kind), device)
        model_implant = np.asarray(result.implant.mask, dtype=bool)
        timings["vae"] = time.perf_counter() - t0
    refined = refine_implant(
        case.defective,
        model_implant,
        kind,
        refine="refine" in method,
        symmetry="symmetry" in method,
        cfg=rimfit_cfg,
        atlas=atlas if method.endswith("atlas") else None,
        atlas_cfg=atlas_cfg,
        refiner=refiner if method.endswith("learned") else None,
    )
    timings.update(refined.timings)
    return refined.implant, timings, refined.messages


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
    methods: Sequence[str] = ("refine",),
    defect_types: Sequence[str] = ("cranial", "vault"),
    seeds: Sequence[int] = (0,),
    bundle=None,
    device: str = "cpu",
    progress=None,
    rimfit_cfg=None,
    atlas=None,
    atlas_cfg=None,
    refiner=None,
) -> list[dict]:
    """One row per (case, defect, seed, method): the :func:`score` metrics plus seconds and messages."""
    rows = []
    for n, case in enumerate(defect_cases(root, case_ids, defect_types, seeds)):
        for method in methods:
            if progress is not None:
                progress("evaluate implants", n / max(len(case_ids), 1), f"{case.defect} {case.case_id} {method}")
            t0 = time.perf_counter()
            pred, timings, messages = predict(method, case, bundle, device, rimfit_cfg, atlas, atlas_cfg, refiner)
            seconds = time.perf_counter() - t0
            row = {"case_id": case.case_id, "defect": case.defect, "seed": case.seed, "method": method}
            row.update(score(pred, case))
            row["seconds"] = seconds  # the method's time, without scoring
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
