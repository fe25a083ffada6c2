"""Which skulls does the posterior-pole hole rule change? (issue 24 §1, SkullFix training case 009)

Before, a group of missing rays that touched either pole of the ray grid or any cell of its downward
seam was "open"; now the posterior pole is the back of the vault and the seam is the skull base only
more than ``SKULL_BASE_DEG`` below the horizontal. For every skull given (``FOLDER:FIRST-LAST``; a
``complete_skull`` folder also gets the evaluation's vault defects, seeds 0 and 1) this casts the rays
once and compares the holes of both rules, cell for cell, one line per skull::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hole_rule_change.py \\
        ../shared/data/skullfix/defective_skull:000-063 ../shared/data/skullfix_test/defective_skull:000-059
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from SkullVAELib.data.defects import case_seed, cranial_defect
from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimconfig import RimFitConfig
from SkullVAELib.implant.rimholes import find_holes
from SkullVAELib.implant.scanedge import cell_solid_angle, scan_edge
from SkullVAELib.io.image import SkullImage, read_skull

CFG = RimFitConfig()


def old_rule_holes(raymap, unknown: np.ndarray) -> list[np.ndarray]:
    """The holes as the rule before this change found them (both poles and the whole seam open)."""
    labels, n = ndimage.label(~raymap.hit, structure=np.ones((3, 3), bool))
    reach = np.where(unknown, 0, labels)
    border = np.unique(np.r_[reach[0], reach[-1], reach[:, 0], reach[:, -1]])
    omega = cell_solid_angle(CFG.step_deg)
    groups = [labels == lab for lab in range(1, n + 1) if lab not in border]
    return [g for g in groups if float((omega * g).sum()) >= CFG.min_hole_sr]


def same_holes(skull: SkullImage) -> tuple[bool, int, int]:
    """(the same holes?, holes before, holes now)."""
    raymap = raycast.cast(skull, raycast.cranial_centre(skull), CFG.step_deg)
    edge = scan_edge(skull, raymap, CFG.edge_margin_mm, CFG.beyond_mm)
    now = find_holes(raymap, CFG.min_hole_sr, edge.unknown)
    before = old_rule_holes(raymap, edge.unknown)
    same = len(before) == len(now) and all(any(np.array_equal(b, h.cells) for b in before) for h in now)
    return same, len(before), len(now)


def main(specs: list[str]) -> None:
    for spec in specs:
        folder, ids = spec.rsplit(":", 1)
        first, last = (int(v) for v in ids.split("-"))
        for n in range(first, last + 1):
            path = Path(folder) / f"{n:03d}.nrrd"
            skull = read_skull(path, kind="binary")
            skulls = [(str(path), skull)]
            if "complete_skull" in folder:
                for seed in (0, 1):
                    defective, _ = cranial_defect(skull, case_seed(seed, f"{n:03d}"), style="skullbreak")
                    skulls.append((f"{path} vault {seed}", defective))
            for name, image in skulls:
                same, before, now = same_holes(image)
                print(name, "same" if same else f"CHANGED: {before} holes before, {now} now", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
