"""Per-case rim-fit implants on SkullFix: DSC, bDSC, HD95 and the implant-quality score (issue 24).

Not a timing: one row per (case, defect, seed) of the rim fit with the mirror cue (the
``rimfit`` source's default), scored with :mod:`SkullVAELib.evaluation.implants` and
:func:`SkullVAELib.implant.quality.implant_quality`; rows are appended to ``--out`` (JSON lines)
as each case finishes, so a partial run keeps its cases. ``--save`` keeps each implant (its
bounding box, packed bits) to score again later (``--rescore``). ``--self-check`` adds the rim fit's check on
the skull's intact vault (:mod:`SkullVAELib.implant.selfcheck`: its DSC estimate, places, each place's score;
``--summary`` then gives its Spearman with the true DSC, alone and with the hole's size held out).
``--cavities`` adds the scores against
the truth with its own enclosed voids counted as implant (:mod:`SkullVAELib.evaluation.cavities`: how
much of the error is the label's diploic texture) and their volume::

    nice -n 10 .venv/bin/python benchmarks/rimfit_cases.py --ids 056-063 --seeds 0,1 \
        --out /tmp/val.jsonl --save /tmp/val-implants
    .venv/bin/python benchmarks/rimfit_cases.py --summary /tmp/val.jsonl
    .venv/bin/python benchmarks/rimfit_cases.py --summary validation.jsonl test.jsonl --plot selfcheck.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _cases import add_case_arguments, selected_cases

from SkullVAELib.evaluation.cavities import enclosed_cavities
from SkullVAELib.evaluation.implants import score
from SkullVAELib.evaluation.metrics import bounding_box, implant_metrics
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.selfcheck import check_rim_fit
from SkullVAELib.implant.symmetry import find_mirror_plane


def _save(path: Path, implant: np.ndarray) -> None:
    box = bounding_box(implant)
    lo = [s.start for s in box] if box else [0, 0, 0]
    crop = implant[box] if box else np.zeros((0, 0, 0), dtype=bool)
    np.savez_compressed(path, lo=lo, shape=implant.shape, crop_shape=crop.shape, bits=np.packbits(crop))


def _load(path: Path) -> np.ndarray:
    z = np.load(path)
    out = np.zeros(tuple(z["shape"]), dtype=bool)
    crop_shape = tuple(int(v) for v in z["crop_shape"])
    crop = np.unpackbits(z["bits"])[: int(np.prod(crop_shape))].reshape(crop_shape).astype(bool)
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(z["lo"], crop_shape, strict=True))
    out[box] = crop
    return out


def _quality(case, implant: np.ndarray) -> dict:
    try:
        from SkullVAELib.implant.quality import implant_quality
    except ImportError:  # before issue 24's quality score existed
        return {}
    q = implant_quality(case.defective, implant)
    return {
        "quality": q.score,
        "quality_components": q.components,
        "quality_why": q.explanation,
        "quality_reach_mm": q.measures.get("reach_mm"),
    }


def _cavity_scores(case, implant: np.ndarray) -> dict:
    """The implant scored against the truth with its enclosed cavities filled, and their volume (ml)."""
    sk = case.defective
    cavity = enclosed_cavities(case.implant, sk.mask)
    m = implant_metrics(implant, case.implant | cavity, sk.mask, sk.spacing, 10.0)
    return {
        "cavity_ml": float(np.count_nonzero(cavity)) * sk.voxel_volume_mm3 / 1000.0,
        **{f"{k}_cavities": v for k, v in m.items()},
    }


def run(args) -> None:
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    for case in selected_cases(args):
        name = f"{case.case_id}_{case.defect}_{case.seed}"
        t0 = time.perf_counter()
        messages: list[str] = []
        if args.rescore:
            implant, timings, holes = _load(Path(args.rescore) / f"{name}.npz"), {}, []
        else:
            transform = None if args.no_mirror else find_mirror_plane(case.defective).transform()
            result = rim_fit(case.defective, mirror_transform=transform)
            implant, timings, holes = result.implant, result.timings, result.holes
            messages = list(getattr(result, "messages", []))
        seconds = time.perf_counter() - t0
        check = {}
        if args.self_check and not args.rescore:
            t1 = time.perf_counter()
            found = check_rim_fit(case.defective, result, None, transform)
            check = {"self_check": found.summary(), "self_check_scores": found.scores}
            check["self_check_seconds"] = round(time.perf_counter() - t1, 2)
            check["hole_sr"] = holes[0].solid_angle_sr if holes else 0.0
        row = {"case_id": case.case_id, "defect": case.defect, "seed": case.seed, "label": args.label}
        row.update(score(implant, case))
        row.update(_quality(case, implant))
        row.update(check)
        if args.cavities:
            row.update(_cavity_scores(case, implant))
        if args.truth_quality:
            row["quality_truth"] = _quality(case, case.implant).get("quality")
        row.update(seconds=round(seconds, 2), holes=len(holes), timings={k: round(v, 2) for k, v in timings.items()})
        row["messages"] = messages
        if save:
            _save(save / f"{name}.npz", implant)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(name, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)


def summary(path: str) -> None:
    from scipy import stats

    rows = [json.loads(line) for line in open(path)]
    print("| case | defect | seed | DSC | bDSC | HD95 mm | quality | volume ml (true) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['case_id']} | {r['defect']} | {r['seed'] if r['seed'] is not None else '–'} | {r['dsc']:.3f} "
            f"| {r['bdsc']:.3f} | {r['hd95']:.2f} | {r.get('quality', float('nan')):.2f} "
            f"| {r['volume_ml']:.1f} ({r['true_volume_ml']:.1f}) |"
        )
    for defect in sorted({r["defect"] for r in rows}):
        g = [r for r in rows if r["defect"] == defect]
        dsc = np.array([r["dsc"] for r in g])
        hd = np.array([r["hd95"] for r in g])
        finite = hd[np.isfinite(hd)]
        print(
            f"{defect}: n={len(g)} DSC mean {dsc.mean():.3f} median {np.median(dsc):.3f} min {dsc.min():.3f}; "
            f"HD95 mean {finite.mean() if finite.size else float('nan'):.2f} max {hd.max():.2f}; "
            f"empty {sum(r['empty'] for r in g):.0f}"
        )
        if all("dsc_cavities" in r for r in g):
            passing = [r["dsc"] >= 0.85 and r["hd95"] <= 3.0 for r in g]
            filled = [r["dsc_cavities"] >= 0.85 and r["hd95_cavities"] <= 3.0 for r in g]
            print(
                f"  truth's cavities filled: {np.mean([r['cavity_ml'] for r in g]):.3f} ml mean; DSC "
                f"{np.mean([r['dsc_cavities'] for r in g]):.3f}, HD95 {np.mean([r['hd95_cavities'] for r in g]):.2f} "
                f"mm (max {max(r['hd95_cavities'] for r in g):.2f}); pass (≥ 0.85, ≤ 3 mm) {sum(passing)} → {sum(filled)}"
            )
    if all(r.get("self_check") for r in rows):
        _self_check_summary(rows)
    dsc = [r["dsc"] for r in rows]
    for key, name in (("quality", "quality"), ("quality_reach_mm", "the implant's reach from its rim")):
        values = np.array([r.get(key) if r.get(key) is not None else np.nan for r in rows], dtype=float)
        if np.isfinite(values).all() and len(rows) > 2:
            rho = stats.spearmanr(values, dsc)
            print(f"Spearman({name}, DSC) = {rho.statistic:.2f} (p = {rho.pvalue:.3g}, n = {len(rows)})")


def _self_check_summary(rows: list[dict]) -> None:
    """How well the self-check's DSC estimate ranks the true DSC: Spearman per defect and overall, and
    overall with the hole's solid angle held out (partial correlation of the ranks)."""
    from scipy import stats

    def partial(x, y, z) -> float:
        x, y, z = (stats.rankdata(v) for v in (x, y, z))
        design = np.c_[np.ones_like(z), z]
        rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
        ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
        return float(np.corrcoef(rx, ry)[0, 1])

    usable = [r for r in rows if r["self_check"]["dsc"] is not None]
    print(f"self-check: {len(usable)} of {len(rows)} pairs had an intact place")
    for defect in [*sorted({r["defect"] for r in usable}), "all"]:
        g = [r for r in usable if defect in ("all", r["defect"])]
        est = np.array([r["self_check"]["dsc"] for r in g])
        dsc = np.array([r["dsc"] for r in g])
        rho = stats.spearmanr(est, dsc).statistic if len(g) > 2 else float("nan")
        line = (
            f"  {defect}: n={len(g)} estimate {est.mean():.3f} against true {dsc.mean():.3f} (mean |error| "
            f"{np.abs(est - dsc).mean():.3f}); Spearman {rho:+.2f}"
        )
        if defect == "all" and len(g) > 3:
            line += f", with the hole's size held out {partial(est, dsc, [r['hole_sr'] for r in g]):+.2f}"
        print(line + f"; places median {np.median([r['self_check']['places'] for r in g]):.0f}")


def _plot(paths: list[str], png: str) -> None:
    """The self-check's estimate against the true DSC, one panel per file (titled by its name)."""
    from SkullVAELib.evaluation.figures import plot_estimate_scatter

    panels = {}
    for path in paths:
        rows = [json.loads(line) for line in open(path)]
        panels[Path(path).stem] = [
            {"estimate": r["self_check"]["dsc"], "dsc": r["dsc"], "defect": r["defect"]}
            for r in rows
            if (r.get("self_check") or {}).get("dsc") is not None
        ]
    print(f"wrote {plot_estimate_scatter(panels, png, 'self-check estimate (DSC on the intact vault)')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(p)
    p.add_argument("--out", help="JSON lines file (appended)")
    p.add_argument("--label", default="")
    p.add_argument("--save", help="folder for the implants (npz)")
    p.add_argument("--rescore", help="folder of saved implants: score them instead of running the rim fit")
    p.add_argument("--no-mirror", action="store_true")
    p.add_argument("--truth-quality", action="store_true", help="score the true implant's quality too")
    p.add_argument("--cavities", action="store_true", help="also score against the truth with its cavities filled")
    p.add_argument("--self-check", action="store_true", help="add the rim fit's check on the intact vault")
    p.add_argument("--summary", nargs="+", help="print the table of these JSON lines files and stop")
    p.add_argument(
        "--plot", help="with --summary: the self-check's estimate against the true DSC, a panel per file (PNG)"
    )
    args = p.parse_args()
    if args.summary:
        for path in args.summary:
            summary(path)
        if args.plot:
            _plot(args.summary, args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()
