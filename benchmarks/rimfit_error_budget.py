"""Where the rim fit's error lies, case by case against the truth (issue 24: what a better fill must fix).

Usage::

    .venv/bin/python benchmarks/rimfit_error_budget.py --ids 056-063 --defects cranial,vault,irregular --seeds 0

Per case (the evaluation's ``defect_cases``) one JSON line:

- ``dsc``: the default rim fit's implant DSC (mirror cue, as the ``rimfit`` source);
- ``fn_mm`` / ``fp_mm``: its missed and extra voxels by distance to the patient's bone (≤ 1.5, 1.5–5,
  5–15, > 15 mm), and ``fix_near`` / ``fix_far``: the DSC with every error within / beyond 1.5 mm of
  the bone corrected (the seam at the rim against the surfaces inside the hole);
- in the first hole's rays, a DSC of the radial intervals [inner, outer radius] against the complete
  skull's (each ray weighted by its solid angle and r² dr; ``ray_dsc``), and the same with the true
  outer surface (``true_outer``, the fill's thickness under it) or the true thickness (``true_thickness``,
  under the fill's outer surface): how much each surface costs. ``outer_err_mm`` / ``thickness_err_mm``:
  the fill's mean and RMS error in the hole's rays;
- what a better fill would need (``oracle``, ray DSCs): the fill's outer surface corrected by the
  least-squares polynomial of its own error over the hole (in the hole's tangent plane) of degree 0
  (a per-hole offset), 1, 2 and 4, its thickness kept (``outer_deg0`` … ``outer_deg4``); both surfaces
  corrected by quadratics (``both_deg2``); and the ceiling of any smooth fill, the true inner and outer
  surfaces replaced by their own best quartics (``smooth_deg4``). These use the truth, so they are
  bounds, not methods.

Then the means per defect. Needs SkullFix (``complete_skull``, ``defective_skull``, ``implant``);
about 10 s per case on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cases import add_case_arguments, selected_cases  # noqa: E402

from SkullVAELib.implant.selfcheck import interval_dsc  # noqa: E402  (radial intervals, solid angle × r² dr)

BINS_MM = (1.5, 5.0, 15.0)


def polynomial_fit(xy: np.ndarray, values: np.ndarray, weights: np.ndarray, degree: int) -> np.ndarray:
    """The weighted least-squares polynomial of total ``degree`` in the plane coordinates ``xy`` (N, 2)
    through ``values`` (N,), evaluated at ``xy`` (N,) (scikit-learn: standardised coordinates, their
    monomials, a weighted linear fit)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    model = make_pipeline(StandardScaler(), PolynomialFeatures(degree), LinearRegression())
    model.fit(xy, values, linearregression__sample_weight=weights)
    return model.predict(xy)


def oracle_fills(xy, f_out, f_in, t_out, t_in, omega) -> dict:
    """Ray DSCs of the fill corrected with the truth's help (module docstring, ``oracle``); all (N,)."""
    weights = omega * t_out**2
    error, thick_error = f_out - t_out, (f_out - f_in) - (t_out - t_in)
    fixes = {degree: polynomial_fit(xy, error, weights, degree) for degree in (0, 1, 2, 4)}
    out = {f"outer_deg{d}": interval_dsc(f_in - fix, f_out - fix, t_in, t_out, omega) for d, fix in fixes.items()}
    fix_thick = polynomial_fit(xy, thick_error, weights, 2)
    out["both_deg2"] = interval_dsc(f_in - fixes[2] + fix_thick, f_out - fixes[2], t_in, t_out, omega)
    smooth_out, smooth_in = polynomial_fit(xy, t_out, weights, 4), polynomial_fit(xy, t_in, weights, 4)
    out["smooth_deg4"] = interval_dsc(smooth_in, smooth_out, t_in, t_out, omega)
    return {k: round(v, 4) for k, v in out.items()}


def voxel_budget(pred: np.ndarray, true: np.ndarray, bone: np.ndarray, spacing) -> dict:
    """Missed / extra voxels by distance to the bone, and the DSC with the near or the far ones fixed."""
    distance = ndimage.distance_transform_edt(~bone, sampling=spacing)
    edges = (0.0, *BINS_MM, np.inf)
    out = {}
    for name, wrong in (("fn_mm", true & ~pred), ("fp_mm", pred & ~true)):
        d = distance[wrong]
        out[name] = [int(((d > lo) & (d <= hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    far = distance > BINS_MM[0]
    for name, fixed in (("fix_far", np.where(far, true, pred)), ("fix_near", np.where(far, pred, true))):
        out[name] = round(2 * float((fixed & true).sum()) / (fixed.sum() + true.sum()), 4)
    return out


def ray_budget(case, result, mirror_transform) -> dict:
    """The first hole of ``result`` (the rim fit's ``RimFitResult``: the hole found, clipped to the scan
    and grown) filled again, against the complete skull's rays (see the module docstring); the skull's
    rays are the result's, so only the mirror's and the truth's near the hole are cast."""
    from dataclasses import replace

    from SkullVAELib.implant import raycast
    from SkullVAELib.implant.rimcue import cue_rays
    from SkullVAELib.implant.rimfit import RimFitConfig, fill_hole
    from SkullVAELib.implant.rimspline import gnomonic
    from SkullVAELib.implant.scanedge import cell_solid_angle

    if not result.holes:
        return {}
    (skull, mirror_transform), rays = result.in_frame(case.defective, mirror_transform), result.raymap
    cfg = RimFitConfig().for_voxels(skull.spacing)  # as rim_fit reads it
    hole = replace(result.holes[0])  # fill_hole notes its source and area on the hole it fills
    near = cue_rays([hole.cells], cfg.grow_reach + max(cfg.ring[1], cfg.band))
    mirror = raycast.cast(skull, rays.centre, cfg.step_deg, transform=mirror_transform, rays=near)
    _, r_in, r_out = fill_hole(rays, hole, cfg, mirror)
    truth = raycast.cast(skull.with_mask(case.complete.astype(bool)), rays.centre, cfg.step_deg, rays=near)
    cells = hole.cells & truth.hit & np.isfinite(r_out)
    omega = np.broadcast_to(cell_solid_angle(cfg.step_deg), cells.shape)[cells]
    t_out, t_in, f_out, f_in = truth.r_out[cells], truth.r_in[cells], r_out[cells], r_in[cells]
    outer_err, thick_err = f_out - t_out, (f_out - f_in) - (t_out - t_in)
    xy = gnomonic(raycast.grid_directions(cfg.step_deg)[cells], hole.direction)
    return {
        "source": hole.source,
        "ray_dsc": round(interval_dsc(f_in, f_out, t_in, t_out, omega), 4),
        "true_outer": round(interval_dsc(t_out - (f_out - f_in), t_out, t_in, t_out, omega), 4),
        "true_thickness": round(interval_dsc(f_out - (t_out - t_in), f_out, t_in, t_out, omega), 4),
        "outer_err_mm": [round(float(outer_err.mean()), 2), round(float(np.sqrt((outer_err**2).mean())), 2)],
        "thickness_err_mm": [round(float(thick_err.mean()), 2), round(float(np.sqrt((thick_err**2).mean())), 2)],
        "oracle": oracle_fills(xy, f_out, f_in, t_out, t_in, omega),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(p, defects="cranial,vault,irregular", seeds="0")
    args = p.parse_args()
    from SkullVAELib.evaluation.implants import score
    from SkullVAELib.implant.rimfit import rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    rows = []
    for case in selected_cases(args):
        mirror = find_mirror_plane(case.defective).transform()
        result = rim_fit(case.defective, mirror_transform=mirror)
        implant = result.implant
        row = {
            "id": case.case_id,
            "defect": case.defect,
            "seed": case.seed,
            "dsc": round(score(implant, case)["dsc"], 4),
        }
        row.update(voxel_budget(implant, case.implant.astype(bool), case.defective.mask, case.defective.spacing))
        row.update(ray_budget(case, result, mirror))
        rows.append(row)
        print(json.dumps(row), flush=True)
    for defect in sorted({r["defect"] for r in rows}):
        mine = [r for r in rows if r["defect"] == defect and "ray_dsc" in r]
        means = {
            k: round(float(np.mean([r[k] for r in mine])), 4)
            for k in ("dsc", "fix_far", "fix_near", "ray_dsc", "true_outer", "true_thickness")
        }
        print(f"{defect:10s} n {len(mine):3d} " + " ".join(f"{k} {v:.4f}" for k, v in means.items()))
        oracle = {k: float(np.mean([r["oracle"][k] for r in mine])) for k in mine[0]["oracle"]} if mine else {}
        print(f"{'':10s} oracle " + " ".join(f"{k} {v:.4f}" for k, v in oracle.items()))


if __name__ == "__main__":
    main()
