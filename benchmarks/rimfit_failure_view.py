"""Why a rim-fit implant failed: one PNG and one JSON line per skull/defect pair (issue 24, tails).

Not a timing. For each ``ID:DEFECT:SEED`` (``cranial`` takes no seed: ``056:cranial:``) the default rim
fit with the mirror cue, as ``benchmarks/rimfit_cases.py`` runs it, then:

- top row, in ray space around the hole (:mod:`SkullVAELib.evaluation.rayviews`): which rays hold truth
  and implant, truth the implant misses (more than a quarter of a ray's) inside the hole (the fill's
  radii are off) or outside it (the hole the rays saw was smaller than the defect), implant without truth; the patient's outer radius on
  the same rays; the true implant's outer surface minus the implant's, ray by ray (mm);
- bottom row: three slices through the missed voxel farthest from the implant (``--surplus``: the
  surplus voxel farthest from the truth), cropped to 60 voxels around it;
- printed: DSC, HD95, missed and surplus ml, the truth's rays by group, the truth's own cavities
  (:mod:`SkullVAELib.evaluation.cavities`) and HD95 with them filled, the hole's cue.

Usage::

    .venv/bin/python benchmarks/rimfit_failure_view.py 042:irregular:10 000:vault:11 --out /tmp/views
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLOURS = {  # RAY_GROUPS' colours (RGB) in the ray map
    "bone": (0.0, 0.0, 0.5),
    "both": (0.0, 0.9, 0.0),
    "truth in the hole": (1.0, 1.0, 0.0),
    "truth outside the hole": (1.0, 0.5, 0.0),
    "implant only": (1.0, 0.0, 0.0),
}


def parse_pair(text: str) -> tuple[str, str, int]:
    """(id, defect, seed) of ``ID:DEFECT:SEED`` (an empty seed is 0); a malformed pair is argparse's error."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or parts[1] not in ("cranial", "vault", "irregular", "skullbreak"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ID:DEFECT:SEED, e.g. 042:irregular:10 or 056:cranial:")
    try:
        return parts[0], parts[1], int(parts[2] or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the seed must be an integer") from None


def _crop(groups: dict, pad: int = 15) -> tuple[slice, slice]:
    rows, cols = np.nonzero(groups["hole"] | groups["truth outside the hole"] | groups["implant only"])
    if not len(rows):
        return slice(None), slice(None)
    return slice(max(rows.min() - pad, 0), rows.max() + pad), slice(max(cols.min() - pad, 0), cols.max() + pad)


def draw(path: Path, title: str, groups: dict, raymap, outer_error, bone, truth, implant, voxel) -> None:
    """The PNG: ray map, outer radius and ``outer_error`` (Nα, Nβ) mm (top); three slices through
    ``voxel`` (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from SkullVAELib.evaluation.rayviews import RAY_GROUPS

    rows, cols = _crop(groups)
    rgb = np.zeros((*groups["bone"].shape, 3))
    for name in RAY_GROUPS:
        rgb[groups[name]] = COLOURS[name]
    fig, axes = plt.subplots(2, 3, figsize=(16, 10))
    axes[0, 0].imshow(rgb[rows, cols], origin="lower")
    axes[0, 0].set_title(
        "rays: both (green), truth in the hole (yellow), truth outside it (orange), implant only (red)", fontsize=7
    )
    image = axes[0, 1].imshow(np.where(raymap.hit, raymap.r_out, np.nan)[rows, cols], origin="lower")
    axes[0, 1].set_title("patient's outer radius mm (rows: α, columns: β)", fontsize=8)
    fig.colorbar(image, ax=axes[0, 1], shrink=0.8)
    image = axes[0, 2].imshow(outer_error[rows, cols], origin="lower", cmap="RdBu_r", vmin=-5.0, vmax=5.0)
    axes[0, 2].set_title("true outer surface − the implant's, mm (red: implant too low)", fontsize=8)
    fig.colorbar(image, ax=axes[0, 2], shrink=0.8)
    for axis, ax in enumerate(axes[1]):
        if voxel is None:
            ax.axis("off")
            continue
        window = tuple(voxel[a] if a == axis else slice(max(voxel[a] - 60, 0), voxel[a] + 60) for a in range(3))
        pic = np.zeros((*bone[window].shape, 3))
        pic[bone[window]] = (0.0, 0.0, 0.6)
        pic[(implant & truth)[window]] = (0.0, 0.9, 0.0)
        pic[(implant & ~truth)[window]] = (1.0, 0.0, 0.0)
        pic[(truth & ~implant)[window]] = (1.0, 1.0, 0.0)
        ax.imshow(np.transpose(pic, (1, 0, 2)), origin="lower")
        ax.set_title(
            f"index axis {axis} = {voxel[axis]}: bone blue, both green, missed yellow, surplus red", fontsize=7
        )
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def view(pair: tuple[str, str, int], args) -> dict:
    """Fits, scores and draws one pair; returns its JSON row."""
    from SkullVAELib.evaluation.cavities import enclosed_cavities
    from SkullVAELib.evaluation.extra_cases import scored_cases
    from SkullVAELib.evaluation.implants import score
    from SkullVAELib.evaluation.metrics import hd95
    from SkullVAELib.evaluation.rayviews import error_rays, error_summary, farthest_error, outer_radius_map
    from SkullVAELib.implant.rimfit import rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    case_id, defect, seed = pair
    case = next(scored_cases(args.data, [case_id], [defect], [seed]))
    skull, truth = case.defective, case.implant
    result = rim_fit(skull, mirror_transform=find_mirror_plane(skull).transform())
    implant = result.implant
    skull, _ = result.in_frame(skull)  # the frame its rays were cast in (a hole near a grid pole: pitched)
    groups = error_rays(result.raymap, result.holes, truth, implant, skull)
    error, other = (implant & ~truth, truth) if args.surplus else (truth & ~implant, implant)
    voxel, far_mm = farthest_error(error, other, skull.spacing)
    cavity = enclosed_cavities(truth, skull.mask)
    centre, step = result.raymap.centre, result.raymap.step_deg
    outer_error = outer_radius_map(truth, skull, centre, step) - outer_radius_map(implant, skull, centre, step)
    row = {"id": case_id, "defect": defect, "seed": None if defect == "cranial" else seed}
    row.update({k: round(v, 4) for k, v in score(implant, case).items() if k in ("dsc", "bdsc", "hd95")})
    row.update(
        {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in error_summary(groups, truth, implant, skull.voxel_volume_mm3).items()
        }
    )
    row["cavity_ml"] = round(float(cavity.sum()) * skull.voxel_volume_mm3 / 1000.0, 3)
    row["hd95_cavities_filled"] = round(hd95(implant, truth | cavity, skull.spacing), 2)
    row["farthest_mm"] = round(far_mm, 2)
    in_hole = outer_error[groups["hole"] & np.isfinite(outer_error)]
    row["hole_outer_error_mm"] = (
        [round(float(v), 2) for v in np.percentile(in_hole, [5, 50, 95])] if in_hole.size else None
    )
    row["cue"] = result.cue or "none"
    name = f"{case_id}_{defect}_{seed}.png"
    title = f"{case_id} {defect} {row['seed']}: DSC {row['dsc']:.3f}, HD95 {row['hd95']:.2f} mm, cue {row['cue']}"
    draw(args.out / name, title, groups, result.raymap, outer_error, skull.mask, truth, implant, voxel)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", type=parse_pair, help="ID:DEFECT:SEED, e.g. 042:irregular:10")
    p.add_argument("--data", default="../shared/data/skullfix")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs (made if missing)")
    p.add_argument("--surplus", action="store_true", help="slice through the farthest surplus voxel instead")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs:
        print(json.dumps(view(pair, args)), flush=True)


if __name__ == "__main__":
    main()
