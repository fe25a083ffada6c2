"""Gantry-tilted scans whose top edge cuts the cranial defect (issue 24 §1): the rim fit on each.

Not a timing. Each spec ``ID:TILT:KEEP`` takes SkullFix skull ID (complete, defective and implant),
resamples all three (nearest neighbour, SimpleITK) onto a grid rotated TILT degrees about the LPS
left-right axis — an oblique direction, as a gantry tilt stores it — that covers the skull, and
crops its top slice at KEEP of the true implant's height along the tilted axis, so the defect
reaches the scan's top edge. Then the rim fit (mirror cue on, the ``rimfit`` source's default) runs
on the defective skull and on the complete one (which must get no implant), and each implant is
scored (DSC, HD95 against the resampled true implant; the quality score where the code has one).
Prints one JSON line per skull. Works with older checkouts too (``PYTHONPATH=OLD/ python ...``),
to compare before and after::

    nice -n 10 .venv/bin/python benchmarks/tilted_scans.py 002:-30:0.3 012:30:0.3 020:-21:0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SkullVAELib.evaluation.metrics import implant_metrics
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.symmetry import find_mirror_plane
from SkullVAELib.io.image import SkullImage, read_skull

DEFAULT_SPECS = (
    "002:-30:0.3 002:21:0.5 012:-25:0.5 012:-30:0.3 012:25:0.7 012:30:0.3 020:-21:0.3 020:-30:0.6 "
    "020:21:0.9 020:30:0.4 030:-21:0.4 030:-30:0.5 030:30:0.2 040:-30:0.2 040:30:0.8 045:-21:0.6 045:30:0.5"
)


def tilted(
    complete: SkullImage, defective: SkullImage, implant: SkullImage, tilt_deg: float, keep: float
) -> list[SkullImage]:
    """The three on a grid tilted ``tilt_deg`` about LPS x that covers the defective skull (3 voxels of
    margin) and whose top slice cuts the implant at ``keep`` of its height along the tilted axis."""
    t = np.deg2rad(tilt_deg)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    direction = rot @ defective.direction
    to_index = np.linalg.inv(direction @ np.diag(defective.spacing))
    affine = defective.index_to_physical()

    def index_of(mask, every):
        return (np.argwhere(mask)[::every] @ affine[:3, :3].T + affine[:3, 3]) @ to_index.T

    bone, cut = index_of(defective.mask, 50), index_of(implant.mask, 20)
    lo, hi = np.floor(bone.min(axis=0)) - 3, np.ceil(bone.max(axis=0)) + 3
    hi[2] = np.floor(cut[:, 2].min() + keep * (cut[:, 2].max() - cut[:, 2].min()))
    ref = sitk.Image([int(v) for v in hi - lo + 1], sitk.sitkUInt8)
    ref.SetOrigin(tuple(float(v) for v in (direction @ np.diag(defective.spacing)) @ lo))
    ref.SetSpacing(tuple(float(v) for v in defective.spacing))
    ref.SetDirection(tuple(float(v) for v in direction.ravel()))
    out = []
    for image in (complete, defective, implant):
        res = sitk.Resample(image.to_sitk(), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        out.append(SkullImage(sitk.GetArrayFromImage(res).transpose(2, 1, 0) != 0, *SkullImage.geometry_from_sitk(res)))
    return out


def _row(skull: SkullImage, truth: np.ndarray | None) -> dict:
    result = rim_fit(skull, mirror_transform=find_mirror_plane(skull).transform())
    row = {"implant_ml": float(result.implant.sum()) * skull.voxel_volume_mm3 / 1000.0}
    row["messages"] = list(getattr(result, "messages", []))
    if truth is not None:
        m = implant_metrics(result.implant, truth, skull.mask, skull.spacing)
        row.update(dsc=m["dsc"], hd95=m["hd95"], true_ml=float(truth.sum()) * skull.voxel_volume_mm3 / 1000.0)
        try:
            from SkullVAELib.implant.quality import implant_quality
        except ImportError:  # before issue 24
            return row
        row["quality"] = implant_quality(skull, result.implant).score
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="*", default=DEFAULT_SPECS.split(), help="ID:TILT_DEG:KEEP (default: 17 cases)")
    p.add_argument("--data", default="../shared/data/skullfix", help="SkullFix folder (train ids only, please)")
    args = p.parse_args()
    root = Path(args.data)
    for spec in args.specs:
        cid, tilt, keep = spec.split(":")
        parts = [
            read_skull(root / f / f"{cid}.nrrd", kind="binary")
            for f in ("complete_skull", "defective_skull", "implant")
        ]
        complete, defective, implant = tilted(*parts, float(tilt), float(keep))
        base = {
            "case": cid,
            "tilt_deg": float(tilt),
            "keep": float(keep),
            "top_edge_implant_voxels": int(implant.mask[:, :, -1].sum()),
        }
        print(json.dumps({**base, "skull": "defective", **_row(defective, implant.mask)}), flush=True)
        print(json.dumps({**base, "skull": "complete", **_row(complete, None)}), flush=True)


if __name__ == "__main__":
    main()
