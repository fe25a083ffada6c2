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
resampled onto the coarse grid the same way: what the coarser scan costs the rim fit. Needs SkullFix (``complete_skull``, ``defective_skull``,
``implant``); about 4 s per case and variant on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SKULLFIX  # noqa: E402


def parse_variant(spec: str) -> tuple[str, dict]:
    """("name", RimFitConfig keyword arguments) of ``NAME=FIELD:VALUE;...`` (values cast to the field's type)."""
    from SkullVAELib.implant.rimfit import RimFitConfig

    name, _, settings = spec.partition("=")
    defaults = RimFitConfig()
    known = {f.name for f in fields(RimFitConfig)}
    kwargs = {}
    for item in filter(None, settings.split(";")):
        key, _, value = item.partition(":")
        if key not in known:
            raise SystemExit(f"rimfit_variants.py: error: {key!r} is not a RimFitConfig field")
        default = getattr(defaults, key)
        if isinstance(default, tuple):  # e.g. ring:5,20
            kwargs[key] = tuple(type(default[0])(v) for v in value.split(","))
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


def summary(rows: list[dict], names: list[str]) -> None:
    """Per defect and variant: mean / min DSC, mean / max HD95, cases better / worse than the first variant."""
    for defect in sorted({r["defect"] for r in rows}):
        mine = [r for r in rows if r["defect"] == defect]
        for name in names:
            dsc = np.array([r[name][0] for r in mine])
            hd = np.array([r[name][1] for r in mine])
            moved = dsc - np.array([r[names[0]][0] for r in mine])
            print(
                f"{defect:10s} {name:10s} n {len(mine):3d}  DSC {dsc.mean():.4f} (min {dsc.min():.4f})  "
                f"HD95 {hd.mean():.2f} (max {hd.max():.2f})  better/worse {int((moved > 0.005).sum())}/"
                f"{int((moved < -0.005).sum())}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--ids", default="056-063", help="case ids (validation by default)")
    p.add_argument("--defects", default="cranial,vault", help="cranial, vault, irregular (comma-separated)")
    p.add_argument("--seeds", default="0,1", help="defect seeds of vault and irregular")
    p.add_argument("--variant", action="append", required=True, help="NAME=FIELD:VALUE;... (repeat)")
    p.add_argument("--shapes", type=Path, default=None, help="a shape bank or shape model every variant gets")
    p.add_argument(
        "--spacing", type=_spacing, default=None, help="IxJxK mm: score every case as a scan of this voxel size"
    )
    args = p.parse_args()
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.evaluation.implants import defect_cases, score
    from SkullVAELib.evaluation.resolution import coarser_case, coarser_grid, resample_mask
    from SkullVAELib.implant.rimfit import RimFitConfig, rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    variants = dict(parse_variant(v) for v in args.variant)
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
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for case in defect_cases(args.data, parse_id_spec(args.ids), args.defects.split(","), seeds):
        row = {"id": case.case_id, "defect": case.defect, "seed": case.seed}
        if spacing is not None:  # the defaults at full resolution, then the case as the coarser scan
            fine = case.defective
            full = rim_fit(fine, mirror_transform=find_mirror_plane(fine).transform()).implant
            case = coarser_case(case, spacing)
            full = resample_mask(fine, full, coarser_grid(fine, spacing)).mask & ~case.defective.mask
            measured = score(full, case)
            row["full"] = (round(measured["dsc"], 4), round(measured["hd95"], 2))
        mirror = find_mirror_plane(case.defective).transform()
        for name, kwargs in variants.items():
            implant = rim_fit(case.defective, RimFitConfig(**kwargs), mirror_transform=mirror, shapes=shapes).implant
            measured = score(implant, case)
            row[name] = (round(measured["dsc"], 4), round(measured["hd95"], 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary(rows, list(variants) + (["full"] if spacing is not None else []))


if __name__ == "__main__":
    main()
