"""Time from SkullVAELogic.process() to the result on one volume, under the slicer-core wheel.

    OMP_NUM_THREADS=2 python SkullVAE/Testing/benchmark_logic.py CASE.nrrd [--preset paper]

Uses an untrained bundle of the given preset (random weights, centroids set): the time is
that of the real pipeline (write input, child process start, read, encode, decode, write
.seg.nrrd, load, closed surfaces), not of a trained model's quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SkullVAESlicerLib import nodes  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--defect", default="cranial")
    parser.add_argument("--model", help="a trained bundle to time instead of an untrained preset")
    args = parser.parse_args()

    import numpy as np

    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import network_preset

    with tempfile.TemporaryDirectory() as folder:
        model = args.model or str(Path(folder) / "model")
        if not args.model:
            bundle = new_bundle(network_preset(args.preset), aggregated=True, seed=0)
            d = bundle.network.latent_size
            bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1), "facial": np.full(d, -0.1)})
            bundle.save(model)
        scene, _logics = nodes.createCoreScene()
        volume = nodes.readVolume(scene, args.input)
        stages = {}
        start = time.perf_counter()
        logic = SkullVAELogic()
        logic.logCallback = lambda text: None
        seg = logic.process(
            volume,
            model,
            defect=args.defect,
            onProgress=lambda stage, fraction, message: stages.setdefault(stage, time.perf_counter() - start),
        )
        total = time.perf_counter() - start
    dims = volume.GetImageData().GetDimensions()
    print(
        f"input {args.input} {dims}, model {args.model or 'untrained ' + args.preset}: process() -> result {total:.1f} s"
    )
    print("first progress event per stage (s after process()):", {k: round(v, 1) for k, v in stages.items()})
    print("segments:", [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
