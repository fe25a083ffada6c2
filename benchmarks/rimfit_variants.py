"""The rim fit under other settings, case by case against the truth (issue 24: choosing a setting on validation).

Usage::

    .venv/bin/python benchmarks/rimfit_variants.py --ids 056-063 --defects cranial,vault,irregular \\
        --seeds 0,1 --variant base= --variant nogrow=grow_mm:0 --variant r6=grow_reach:6

A variant is ``NAME=FIELD:VALUE;FIELD:VALUE`` of :class:`~SkullVAELib.implant.rimfit.RimFitConfig`
(``NAME=`` alone: the defaults). Each case (the evaluation's ``defect_cases``: SkullFix's own
defect for ``cranial``, ``cranial_defect`` of the style with ``case_seed(seed, ID)`` for ``vault`` and
``irregular``) registers its mirror plane once and fits every variant with the mirror cue, as the
``rimfit`` source does (with ``--shapes BANK`` also the shape bank's cue; ``shape_neighbours:0`` turns
it off). Prints one JSON line per case (implant DSC and HD95 mm per variant), then per
defect and variant: mean and minimum DSC, mean and largest HD95, and how many cases moved by more
than 0.005 DSC against the first variant. With ``--spacing IxJxK`` (mm) every case is first put on a
coarser grid over the same box (``evaluation.resolution.coarser_case``: a clinical slice thickness) and
scored there, and a column ``full`` gives the defaults run at the case's own resolution, their implant
resampled onto the coarse grid the same way: what the coarser scan costs the rim fit. ``--vote
NAME=A,B,C`` adds a column, the voxel-wise majority of those variants' implants (an ensemble of
settings); ``--quality`` adds each variant's implant-quality score as a third value, and
``--fallback-below Q`` a column that keeps the first variant unless its score is under Q, else the
best-scoring one. Needs SkullFix (``complete_skull``, ``defective_skull``, ``implant``); about 4 s per
case and variant on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cases import add_case_arguments, selected_cases  # noqa: E402


def parse_variant(spec: str) -> tuple[str, dict]:
    """("name", RimFitConfig keyword arguments) of ``NAME=FIELD:VALUE;...`` (values cast to the field's type;
    ``mirror:0`` is not a field: the variant fits without the mirror cue, as ``--no-mirror`` does)."""
    from SkullVAELib.implant.rimfit import RimFitConfig

    name, _, settings = spec.partition("=")
    defaults = RimFitConfig()
    known = {f.name for f in fields(RimFitConfig)}
    kwargs = {}
    for item in filter(None, settings.split(";")):
        key, _, value = item.partition(":")
        if key == "mirror":
            kwargs["mirror"] = value not in ("0", "false", "no")
            continue
        if key not in known:
            raise SystemExit(f"rimfit_variants.py: error: {key!r} is not a RimFitConfig field")
        default = getattr(defaults, key)
        if isinstance(default, tuple):  # e.g. ring:5,20
            kind = type(default[0]) if default else int
            kwargs[key] = tuple(kind(v) for v in value.split(",") if v)
        else:
            kwargs[key] = float(value) if default is None else type(default)(value)  # None: an optional number
    return name or "base", kwargs


def _spacing(text: str) -> tuple[float, float, float]:
    """argparse type of ``--spacing``: a bad value is argparse's one-line error (exit 2)."""
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.evaluation.resolution import parse_spacing

    try:
        return parse_spacing(text)
    except SkullVAEError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def with_fallback(rows: list[dict], names: list[str], below: float) -> str:
    """Adds to each row the column ``fallback``: the first variant, unless its implant-quality score is
    under ``below``, then the variant of the highest score (what a Completer choosing by quality would
    keep). Returns the column's name."""
    for row in rows:
        pick = names[0]
        if row[pick][2] < below:
            pick = max(names, key=lambda n: row[n][2])
        row["fallback"] = row[pick]
        row["fallback_pick"] = pick
    return "fallback"


def summary(rows: list[dict], names: list[str]) -> None:
    """Per defect and variant: mean / min DSC, mean / max HD95, cases better / worse than the first variant,
    and the cases that pass the per-case bar (DSC ≥ 0.85, HD95 ≤ 3 mm)."""
    for defect in sorted({r["defect"] for r in rows}):
        mine = [r for r in rows if r["defect"] == defect]
        for name in names:
            dsc = np.array([r[name][0] for r in mine])
            hd = np.array([r[name][1] for r in mine])
            moved = dsc - np.array([r[names[0]][0] for r in mine])
            print(
                f"{defect:10s} {name:10s} n {len(mine):3d}  DSC {dsc.mean():.4f} (min {dsc.min():.4f})  "
                f"HD95 {hd.mean():.2f} (max {hd.max():.2f})  better/worse {int((moved > 0.005).sum())}/"
                f"{int((moved < -0.005).sum())}  pass {int(((dsc >= 0.85) & (hd <= 3.0)).sum())}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(p)
    p.add_argument("--variant", action="append", required=True, help="NAME=FIELD:VALUE;... (repeat)")
    p.add_argument("--shapes", type=Path, default=None, help="a shape bank or shape model every variant gets")
    p.add_argument(
        "--spacing", type=_spacing, default=None, help="IxJxK mm: score every case as a scan of this voxel size"
    )
    p.add_argument("--quality", action="store_true", help="score each variant's implant quality too (third value)")
    p.add_argument(
        "--fallback-below",
        type=float,
        default=None,
        help="with --quality: a column keeping the first variant unless its quality is under this, then the best-scoring",
    )
    p.add_argument(
        "--vote",
        action="append",
        default=[],
        help="NAME=VARIANT,VARIANT,...: a column, the voxel-wise majority of those variants' implants (repeat)",
    )
    args = p.parse_args()
    from SkullVAELib.evaluation.implants import score
    from SkullVAELib.evaluation.resolution import coarser_case, coarser_grid, resample_mask
    from SkullVAELib.implant.rimfit import RimFitConfig, rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    variants = dict(parse_variant(v) for v in args.variant)
    votes = {name: members.split(",") for name, _, members in (v.partition("=") for v in args.vote)}
    for name, members in votes.items():
        if not set(members) <= set(variants):
            raise SystemExit(f"rimfit_variants.py: error: vote {name!r} names an unknown variant")
    spacing = args.spacing
    shapes = None
    if args.shapes is not None:  # a bank (build-shapes) or a shape model (tools/make_shape_model.py)
        from SkullVAELib.core.errors import SkullVAEError
        from SkullVAELib.implant.shapebank import load_shape_bank
        from SkullVAELib.implant.shapemodel import load_shape_model

        try:
            shapes = load_shape_bank(args.shapes)
        except SkullVAEError:
            shapes = load_shape_model(args.shapes)
    rows = []
    for case in selected_cases(args):
        row = {"id": case.case_id, "defect": case.defect, "seed": case.seed}
        if spacing is not None:  # the defaults at full resolution, then the case as the coarser scan
            fine = case.defective
            full = rim_fit(fine, mirror_transform=find_mirror_plane(fine).transform()).implant
            case = coarser_case(case, spacing)
            full = resample_mask(fine, full, coarser_grid(fine, spacing)).mask & ~case.defective.mask
            measured = score(full, case)
            row["full"] = (round(measured["dsc"], 4), round(measured["hd95"], 2))
        mirror = find_mirror_plane(case.defective).transform()
        implants = {}
        for name, kwargs in variants.items():
            kwargs = dict(kwargs)
            cue = mirror if kwargs.pop("mirror", True) else None
            implant = rim_fit(case.defective, RimFitConfig(**kwargs), mirror_transform=cue, shapes=shapes).implant
            measured = score(implant, case)
            row[name] = (round(measured["dsc"], 4), round(measured["hd95"], 2))
            if votes:
                implants[name] = implant
            if args.quality:
                from SkullVAELib.implant.quality import implant_quality

                row[name] += (round(implant_quality(case.defective, implant).score, 3),)
        for name, members in votes.items():
            count = np.sum([implants[m] for m in members], axis=0, dtype=np.uint8)
            measured = score(count * 2 > len(members), case)
            row[name] = (round(measured["dsc"], 4), round(measured["hd95"], 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = list(variants) + list(votes) + (["full"] if spacing is not None else [])
    if args.quality and args.fallback_below is not None:
        names.append(with_fallback(rows, list(variants), args.fallback_below))
    summary(rows, names)


if __name__ == "__main__":
    main()
