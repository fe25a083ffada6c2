"""A SkullFix skull given as a surface, as a 3D-printing lab exports it: completed by default (issue 24 §1, inputs).

Not a timing. For each pair (``--ids``, ``--defects``, ``--seeds`` as in ``rimfit_cases.py``): the defective skull's
bone surface is written as a binary STL (SkullVAE's own writer: flying edges, windowed-sinc smoothing unless
``--no-smooth``, LPS), read back with ``skullvae complete``'s reading (voxelized at ``--voxel-mm``) and completed by
the default ``Completer``; the implant is scored (DSC, HD95) against the true implant resampled (linear, ≥ 0.5) onto
that grid, beside the same pair completed from the mask itself (scored on the scan's grid). One JSON line a pair,
then a summary::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mesh_input.py --ids 056-063 --defects cranial
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _cases import add_case_arguments, selected_cases

from SkullVAELib.core.config import MESH_VOXEL_MM
from SkullVAELib.evaluation.metrics import dice, hd95
from SkullVAELib.io.skull_input import SkullReading
from SkullVAELib.io.surface import write_implant_stl
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings


def score(completer: Completer, case, voxel_mm: float, smooth: bool) -> dict:
    """One pair: the implant from the mask and from its surface, each scored on its own grid."""
    from_mask = completer.complete(case.defective).implant.mask
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "skull.stl"
        write_implant_stl(case.defective, path, smooth=smooth)
        skull = SkullReading(mesh_voxel_mm=voxel_mm).read(path)
    implant = completer.complete(skull).implant.mask
    truth = sitk.Cast(case.defective.to_sitk(case.implant), sitk.sitkFloat32)
    on_grid = sitk.Resample(truth, skull.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0)
    true_implant = sitk.GetArrayFromImage(on_grid).transpose(2, 1, 0) >= 0.5
    return {
        "case": case.case_id, "defect": case.defect, "seed": case.seed, "grid": list(skull.shape),
        "mask_dsc": round(float(dice(from_mask, case.implant)), 4),
        "mask_hd95": round(float(hd95(from_mask, case.implant, case.defective.spacing)), 2),
        "surface_dsc": round(float(dice(implant, true_implant)), 4),
        "surface_hd95": round(float(hd95(implant, true_implant, skull.spacing)), 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, defects="cranial", seeds="0")
    parser.add_argument("--voxel-mm", type=float, default=MESH_VOXEL_MM, help="the surface's voxels (mm)")
    parser.add_argument("--no-smooth", action="store_true", help="write the surface unsmoothed (voxel steps)")
    args = parser.parse_args()
    completer = Completer(CompletionSettings())
    rows = []
    for case in selected_cases(args):
        rows.append(score(completer, case, args.voxel_mm, not args.no_smooth))
        print(json.dumps(rows[-1]), flush=True)
    for source in ("mask", "surface"):
        dsc, dist = np.array([r[f"{source}_dsc"] for r in rows]), np.array([r[f"{source}_hd95"] for r in rows])
        print(f"from the {source}: {len(rows)} pairs, DSC {dsc.mean():.4f} (min {dsc.min():.4f}), HD95 "
              f"{dist.mean():.2f} mm (max {dist.max():.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
