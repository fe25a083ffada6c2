"""Latency and peak RSS of one completion at full resolution (the `skullvae complete` path).

Untrained weights decode an arbitrary blob, so the implant stages would measure a
pathological case. With ``--oracle COMPLETE.nrrd`` the real decoder still runs (its time is
measured) but its output is swapped for the complete skull on the model grid, so the
implant, STL and write stages see a realistic implant. The oracle's occupancy is prepared
by a separate process (``--prepare``) so it does not count towards the peak RSS.

    python benchmarks/complete_latency.py --prepare complete_skull/070.nrrd --grid 256,256,128 /tmp/oracle.npy
    python benchmarks/complete_latency.py --model M --input defective_skull/070.nrrd --oracle /tmp/oracle.npy \
        --out /tmp/bench --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prepare", nargs=3, metavar=("COMPLETE", "GRID", "NPY"))
    p.add_argument("--model")
    p.add_argument("--input")
    p.add_argument("--oracle")
    p.add_argument("--out", default="/tmp/skullvae_bench")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.prepare:
        from SkullVAELib.grid import to_model_grid
        from SkullVAELib.image import read_skull

        complete, grid, npy = args.prepare
        np.save(npy, to_model_grid(read_skull(complete), [int(g) for g in grid.split(",")]))
        return

    import SimpleITK as sitk
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.completion import complete
    from SkullVAELib.config import CompletionConfig
    from SkullVAELib.image import read_skull
    from SkullVAELib.segfile import Segment, write_segmentation
    from SkullVAELib.surface import write_implant_stl

    t0 = time.perf_counter()
    bundle = ModelBundle.load(args.model)
    timings = {"load_model": time.perf_counter() - t0}
    if args.oracle:
        target = torch.from_numpy(np.load(args.oracle))[None, None]
        decoder = bundle.completion_decoder
        real = decoder.logits
        decoder.logits = lambda z: (real(z), (target - 0.5) * 20.0)[1]
    t = time.perf_counter()
    skull = read_skull(args.input)
    timings["read"] = time.perf_counter() - t
    result = complete(skull, bundle, CompletionConfig(defect="cranial"), device="cpu")
    timings.update(result.timings)
    out = Path(args.out)
    t = time.perf_counter()
    write_segmentation(
        out / "r.seg.nrrd",
        result.completed,
        [Segment("Completed skull", result.completed.mask), Segment("Implant", result.implant.mask)],
    )
    timings["write_segmentation"] = time.perf_counter() - t
    t = time.perf_counter()
    if result.implant.mask.any():
        write_implant_stl(result.implant, out / "i.stl")
    timings["write_stl"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "shape": skull.shape,
                "grid": list(bundle.network.grid),
                "threads": args.threads,
                "implant_cm3": round(result.implant_volume_mm3 / 1000, 1),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
