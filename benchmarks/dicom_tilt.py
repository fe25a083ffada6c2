"""A SkullFix skull as a gantry-tilted CT writes it: a DICOM series completed by default (issue 24 §1, inputs).

Not a timing. For each pair (``--ids``, ``--defects``, ``--seeds`` as in ``rimfit_cases.py``) and each ``--tilts``
angle: a CT made of the defective skull (bone 1200 HU, everything else -1000 HU) is resampled (linear, SimpleITK)
onto the sheared stack a tilted gantry scans (slices along the original grid's rows and columns, each stepping the
slice distance along the normal and tan(tilt) of it along the columns, the stack covering the skull), written as a
DICOM series (one file a slice, each with its own position) into a temporary folder, read with
``read_input_skull`` and completed by the default ``Completer``. The implant is scored (DSC, HD95) against the true
implant resampled (linear, ≥ 0.5) onto the grid it was completed on. Tilt 0 is the same path without the shear (the
baseline: a CT's threshold and a DICOM round trip). ``--slices`` leaves slices out of the series as a scanner's
export may (:func:`left_out`). Prints one JSON line a pair, tilt and slice mode, then a summary::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_tilt.py --ids 056-063 --defects cranial --tilts 0,15,25
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_tilt.py --ids 056-063 --tilts 0 --slices all,one-missing,two-distances
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _cases import add_case_arguments, selected_cases

from SkullVAELib.evaluation.metrics import dice, hd95
from SkullVAELib.io.dicom import keeping_locale
from SkullVAELib.io.skull_input import read_input_skull
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings

UID = "1.2.826.0.1.3680043.2.1125.4242"


def tilted_stack(ct: sitk.Image, tilt_deg: float) -> tuple[sitk.Image, np.ndarray, np.ndarray, np.ndarray]:
    """(the int16 stack, its axes (3, 3), spacing (3,), first slice's position (3,)) of ``ct`` scanned with the
    gantry tilted ``tilt_deg``: slice k at the first one's position + k × (the slice distance along the normal +
    tan(tilt) of it along the columns)."""
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    spacing, size = np.array(ct.GetSpacing()), np.array(ct.GetSize())
    lean = np.tan(np.radians(tilt_deg))
    column = direction[:, 1]
    shift = size[2] * spacing[2] * lean  # mm the last slice lies along the columns from the first
    axes = direction.copy()
    axes[:, 2] = direction[:, 2] + lean * column
    axes[:, 2] /= np.linalg.norm(axes[:, 2])
    stack_spacing = np.array([spacing[0], spacing[1], spacing[2] / np.cos(np.radians(tilt_deg))])
    origin = np.array(ct.GetOrigin()) - column * shift  # starts back, so the stack covers the whole skull
    stack_size = [int(size[0]), int(size[1] + np.ceil(shift / spacing[1])), int(size[2])]
    stack = sitk.Resample(
        ct, stack_size, sitk.Transform(), sitk.sitkLinear, tuple(origin), tuple(stack_spacing), tuple(axes.ravel()),
        -1000.0, sitk.sitkInt16,
    )  # fmt: skip
    return stack, axes, stack_spacing, origin


def write_series(
    stack: sitk.Image, axes: np.ndarray, spacing: np.ndarray, origin: np.ndarray, folder: Path, skip: set[int]
) -> None:
    """``stack`` as a DICOM series in ``folder``: slice k at ``origin`` + k × spacing[2] × axes[:, 2], the slices
    ``skip`` left out."""
    folder.mkdir(parents=True)
    orientation = "\\".join(f"{v:.9f}" for v in (*axes[:, 0], *axes[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with keeping_locale():
        for k in sorted(set(range(stack.GetDepth())) - skip):
            plane = stack[:, :, k]
            plane.SetSpacing(tuple(spacing[:2]))
            position = origin + axes[:, 2] * spacing[2] * k
            tags = {
                "0008|0060": "CT", "0020|000d": UID + ".1", "0020|000e": UID + ".2", "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0020|0013": str(k + 1),
                "0008|0018": f"{UID}.3.{k + 1}",
            }  # fmt: skip
            for tag, value in tags.items():
                plane.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
            writer.Execute(plane)


def left_out(mode: str, depth: int) -> set[int]:
    """The slices ``--slices`` mode ``mode`` leaves out of a stack of ``depth``: "all" none, "one-missing" the slice
    at 80 % of the height (the vault), "two-distances" every second slice of the top half (a protocol that doubles
    the slice distance above the skull base)."""
    return {"all": set(), "one-missing": {int(0.8 * depth)}, "two-distances": set(range(depth // 2 + 1, depth, 2))}[
        mode
    ]


def score(completer: Completer, case, tilt_deg: float, slices: str = "all") -> dict:
    """One pair at one tilt and ``--slices`` mode: the JSON line's fields."""
    ct = sitk.Cast(case.defective.to_sitk(), sitk.sitkFloat32) * 2200.0 - 1000.0
    truth = sitk.Cast(case.defective.to_sitk(case.implant), sitk.sitkFloat32)
    folder = Path(tempfile.mkdtemp(prefix="dicom_tilt_"))
    try:
        write_series(*tilted_stack(ct, tilt_deg), folder / "series", left_out(slices, ct.GetDepth()))
        start = time.perf_counter()
        skull = read_input_skull(folder / "series")
        result = completer.complete(skull)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(folder)
    on_grid = sitk.Resample(truth, skull.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0)
    true_implant = sitk.GetArrayFromImage(on_grid).transpose(2, 1, 0) >= 0.5
    implant = result.implant.mask
    return {
        "case": case.case_id, "defect": case.defect, "seed": case.seed, "tilt_deg": tilt_deg, "slices": slices,
        "grid": list(skull.shape), "dsc": round(float(dice(implant, true_implant)), 4),
        "hd95": round(float(hd95(implant, true_implant, skull.spacing)), 2), "quality": result.quality,
        "resampled": bool(skull.metadata["warnings"]), "seconds": round(seconds, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, defects="cranial", seeds="0")
    parser.add_argument("--tilts", default="0,15,25", help="gantry tilts in degrees (comma-separated)")
    parser.add_argument("--slices", default="all", help="all, one-missing, two-distances (comma-separated)")
    args = parser.parse_args()
    runs = [(float(t), mode) for t in args.tilts.split(",") for mode in args.slices.split(",")]
    completer = Completer(CompletionSettings())
    rows = []
    for case in selected_cases(args):
        for tilt, mode in runs:
            rows.append(score(completer, case, tilt, mode))
            print(json.dumps(rows[-1]), flush=True)
    for tilt, mode in runs:
        at = [r for r in rows if r["tilt_deg"] == tilt and r["slices"] == mode]
        dsc, dist = np.array([r["dsc"] for r in at]), np.array([r["hd95"] for r in at])
        print(f"tilt {tilt:g}°, slices {mode}: {len(at)} pairs, DSC {dsc.mean():.4f} (min {dsc.min():.4f}), HD95 {dist.mean():.2f} mm "
              f"(max {dist.max():.2f}), each ≥ 0.85 and ≤ 3 mm: {int(((dsc >= 0.85) & (dist <= 3)).sum())}")  # fmt: skip


if __name__ == "__main__":
    main()
