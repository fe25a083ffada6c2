"""A SkullFix skull at the top of a scan that holds more (a whole-body CT): completed by default (issue 24 §1).

Not a timing. For each pair (``--ids``, ``--defects``, ``--seeds`` as in ``rimfit_cases.py``) and each ``--below``
length: the defective skull's grid is grown that many mm towards the feet (LPS -z) and filled there with a
stand-in trunk heavier than the skull: a column (14 mm radius) from the bottom to 15 mm under the skull, and rib
rings (70 mm across, 4 mm thick, 8 mm tall, every 25 mm) joined to it by a bar; the default ``Completer`` completes
it, and the implant above the added slices is scored (DSC, HD95) against the true implant. ``--below`` under 100 mm is the
skull alone. One JSON line a pair and length, then a summary::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/body_scan.py --ids 056-063 --defects cranial --below 0,300,700
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _cases import add_case_arguments, selected_cases

from SkullVAELib.evaluation.metrics import dice, hd95
from SkullVAELib.io.image import SkullImage
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings


def on_a_trunk(skull: SkullImage, below_mm: float) -> tuple[SkullImage, int]:
    """(``skull`` on its grid grown ``below_mm`` towards the feet and a stand-in trunk there, the slices added)."""
    spacing = skull.spacing
    pad = int(round(below_mm / spacing[2]))
    if pad < int(round(100 / spacing[2])):  # no room for a trunk: the skull alone
        return skull, 0
    mask = np.zeros((*skull.shape[:2], skull.shape[2] + pad), dtype=bool)
    mask[:, :, pad:] = skull.mask
    i, j = np.nonzero(skull.mask[:, :, 0])
    x, y = np.meshgrid(
        (np.arange(skull.shape[0]) - i.mean()) * spacing[0], (np.arange(skull.shape[1]) - j.mean()) * spacing[1],
        indexing="ij",
    )  # fmt: skip
    top = pad - int(round(15 / spacing[2]))
    mask[:, :, :top] |= (x**2 + (y - 10) ** 2 < 14**2)[:, :, None]
    ribs = (np.abs(np.hypot(x / 1.3, y) - 70) < 4) | ((np.abs(x) < 3) & (y > 10) & (y < 70))
    for k in range(0, top - 80, int(round(25 / spacing[2]))):
        mask[:, :, k : k + int(round(8 / spacing[2]))] |= ribs[:, :, None]
    origin = skull.origin - skull.direction @ np.array([0.0, 0.0, pad * spacing[2]])
    return SkullImage(mask, origin, skull.spacing, skull.direction, {}), pad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, defects="cranial", seeds="0")
    parser.add_argument("--below", default="0,300,700", help="mm of trunk under the skull (comma-separated)")
    args = parser.parse_args()
    lengths = [float(b) for b in args.below.split(",")]
    completer = Completer(CompletionSettings())
    rows = []
    for case in selected_cases(args):
        for below in lengths:
            scan, pad = on_a_trunk(case.defective, below)
            start = time.perf_counter()
            implant = completer.complete(scan).implant.mask
            seconds = time.perf_counter() - start
            head = implant[:, :, pad:]
            rows.append({
                "case": case.case_id, "defect": case.defect, "seed": case.seed, "below_mm": below,
                "trunk_over_skull": round(float(scan.mask[:, :, :pad].sum() / case.defective.mask.sum()), 2),
                "dsc": round(float(dice(head, case.implant)), 4),
                "hd95": round(float(hd95(implant, np.pad(case.implant, ((0, 0), (0, 0), (pad, 0)))
                                         , scan.spacing)), 2),
                "implant_in_trunk": int(implant[:, :, :pad].sum()), "seconds": round(seconds, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    for below in lengths:
        at = [r for r in rows if r["below_mm"] == below]
        dsc, dist = np.array([r["dsc"] for r in at]), np.array([r["hd95"] for r in at])
        print(f"{below:g} mm below: {len(at)} pairs, DSC {dsc.mean():.4f} (min {dsc.min():.4f}), HD95 "
              f"{dist.mean():.2f} mm (max {dist.max():.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
