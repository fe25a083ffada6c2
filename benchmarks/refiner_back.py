"""The facial refiner's probability back onto the patient's grid: the whole scan against the crop's box.

Not a network timing: a crop of random probabilities (the CPU recipe's 72×64×64 at 2 mm) placed
where the refiner would place it on a SkullFix skull with a facial defect, resampled back with
``from_lps_grid`` (the whole grid) and with the crop's box only (``_probability_on_patient``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refiner_back.py ../shared/data/skullfix/complete_skull/056.nrrd
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from SkullVAELib.data.defects import facial_defect
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.crop import crop_start, face_anchor, paste
from SkullVAELib.implant.learned.infer import _probability_on_patient
from SkullVAELib.implant.learned.lps_grid import from_lps_grid, to_lps_grid
from SkullVAELib.io.image import read_skull


def main(path: str, repeats: int = 3) -> None:
    defective, _ = facial_defect(read_skull(path, kind="binary"), 0)
    cfg = RefinerConfig(spacing_mm=2.0, crop_shape=(72, 64, 64), channels=(16, 32, 64, 128), output_head=True)
    t0 = time.perf_counter()
    fraction, grid = to_lps_grid(defective, cfg.spacing_mm)
    print(f"to the LPS grid: {time.perf_counter() - t0:.2f} s")
    origin = torch.tensor(grid.origin, dtype=torch.float32)
    start = crop_start(face_anchor(torch.from_numpy(fraction >= 0.5), origin, cfg.spacing_mm), origin, cfg)
    crop = torch.from_numpy(np.random.default_rng(0).random(cfg.crop_shape, dtype=np.float32))
    on_grid = paste(crop, start, tuple(grid.shape)).numpy()
    for _ in range(repeats):
        t0 = time.perf_counter()
        whole = from_lps_grid(on_grid, grid, defective)
        t1 = time.perf_counter()
        block = (np.subtract(start, 1), np.add(start, cfg.crop_shape) + 1)
        on_box, box = _probability_on_patient(on_grid, grid, block, defective)
        t2 = time.perf_counter()
        outside = np.ones(whole.shape, bool)
        outside[box] = False
        difference = max(np.abs(whole[box] - on_box).max(), np.abs(whole[outside]).max())
        print(f"whole grid {t1 - t0:.2f} s, crop's box {t2 - t1:.2f} s, max |difference| {difference:.1e}")


if __name__ == "__main__":
    main(sys.argv[1])
