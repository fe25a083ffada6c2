"""How much the rim fit moves with its ray centre, and whether a vote over moved centres helps (issue 24).

Usage::

    .venv/bin/python benchmarks/rimfit_centre_jitter.py --ids 056-063 --step-mm 1.5

For each case: SkullFix's own cranial defect and two random vault defects (the evaluation's
``cranial_defect(style="skullbreak")`` with ``case_seed(0|1, ID)``). The rim fit (mirror cue on) runs
from the cranial centre and from six centres ``--step-mm`` away along the axes; printed per case
and defect: implant DSC against the truth of the plain fit, of the majority of the first three fits
(centre, ±x) and of all seven, and the spread (standard deviation) of the seven fits' DSC. Needs
SkullFix (``complete_skull``, ``defective_skull``, ``implant``). One JSON line per case, a summary last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import SKULLFIX  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def cases(data: Path, cid: str):
    """(name, defective skull, true implant) of one SkullFix id: its own defect and two vault defects."""
    from SkullVAELib.data.defects import case_seed, cranial_defect
    from SkullVAELib.io.image import read_skull

    yield (
        "cranial",
        read_skull(data / "defective_skull" / f"{cid}.nrrd"),
        read_skull(data / "implant" / f"{cid}.nrrd").mask,
    )
    complete = read_skull(data / "complete_skull" / f"{cid}.nrrd")
    for seed in (0, 1):
        defective, implant = cranial_defect(complete, case_seed(seed, cid), style="skullbreak")
        yield f"vault{seed}", defective, implant.mask


def jittered(skull, truth, step_mm: float) -> dict[str, float]:
    from SkullVAELib.implant import raycast
    from SkullVAELib.implant.rimfit import rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    mirror = find_mirror_plane(skull).transform()
    centre = raycast.cranial_centre(skull)
    offsets = [np.zeros(3)] + [sign * step_mm * axis for axis in np.eye(3) for sign in (1, -1)]
    fits = [rim_fit(skull, mirror_transform=mirror, centre=centre + o).implant for o in offsets]
    row = {"base": dice(fits[0], truth), "spread": float(np.std([dice(f, truth) for f in fits]))}
    for k in (3, 7):
        row[f"vote{k}"] = dice(np.sum(fits[:k], axis=0, dtype=np.uint8) * 2 > k, truth)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--ids", default="056-063", help="SkullFix case ids (validation by default)")
    p.add_argument("--step-mm", type=float, default=1.5)
    args = p.parse_args()
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows.complete import set_threads

    set_threads(1)
    rows = []
    for cid in parse_id_spec(args.ids):
        for name, skull, truth in cases(args.data, cid):
            rows.append({"id": cid, "defect": name, **jittered(skull, truth, args.step_mm)})
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    for key in ("vote3", "vote7"):
        diff = np.array([r[key] - r["base"] for r in rows])
        print(f"{key}: mean {np.mean([r[key] for r in rows]):.4f} (plain {np.mean([r['base'] for r in rows]):.4f}), "
              f"{int((diff > 0.005).sum())} better, {int((diff < -0.005).sum())} worse of {len(rows)}")  # fmt: skip


if __name__ == "__main__":
    main()
