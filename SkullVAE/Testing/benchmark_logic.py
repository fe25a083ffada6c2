"""Time from SkullVAELogic.process() to the result in the scene, under the slicer-core wheel:
the first Apply (the warm worker starts: imports, models) and the following ones (the same worker).

    OMP_NUM_THREADS=2 python SkullVAE/Testing/benchmark_logic.py CASE.nrrd                 # no model (rim fit)
    OMP_NUM_THREADS=2 python SkullVAE/Testing/benchmark_logic.py CASE.nrrd --preset paper  # an untrained bundle
    ... --applies 3 --one-shot   # one `skullvae complete` child per Apply (batch.py's path) instead

Without ``--preset``/``--model`` it is the first Apply a new user makes: no model, a cranial
defect, the rim fit. ``--preset`` times the real pipeline with an untrained bundle of that
preset (its quality is not measured). The time is what the panel waits for: writing the input,
the worker's computation, reading the result into the scene with the implant's surface (the patient
bone's surface is built afterwards, timed separately as "skull surface"). Per Apply it prints the
wall time, the computation the result JSON reports (``timings.total``: read, fill, write in the
child) and their difference (what the Slicer side and the worker protocol add), with the load
average. The last line says whether the same completion, run in one process, imported MONAI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from SkullVAESlicerLib import nodes  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402

MONAI_CHECK = (
    "import sys; from SkullVAELib.cli import main; "
    "code = main(['complete', '--input', sys.argv[1], '--output', sys.argv[2], '--defect', 'cranial', "
    "'--progress', 'none']); print('monai imported:', any(m == 'monai' or m.startswith('monai.') for m in sys.modules))"
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("--preset", default=None, help="time an untrained bundle of this preset")
    parser.add_argument("--defect", default="cranial")
    parser.add_argument("--model", help="a trained bundle to time instead")
    parser.add_argument("--applies", type=int, default=2, help="Applies in a row with the same settings")
    parser.add_argument("--one-shot", action="store_true", help="one child per Apply (batch.py), no warm worker")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if args.preset and not model:
            import numpy as np

            from SkullVAELib.bundle.model_bundle import new_bundle
            from SkullVAELib.core.config import network_preset

            bundle = new_bundle(network_preset(args.preset), aggregated=True, seed=0)
            d = bundle.network.latent_size
            bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1), "facial": np.full(d, -0.1)})
            model = str(Path(folder) / "model")
            bundle.save(model)
        scene, _logics = nodes.createCoreScene()
        volume = nodes.readVolume(scene, args.input)
        logic = SkullVAELogic(warmWorker=not args.one_shot)
        logic.logCallback = lambda text: None
        rows, seg = [], None
        try:
            for n in range(args.applies):  # into the same output node, as the panel does after its first Apply
                stages = {}
                load = os.getloadavg()[0]
                start = time.perf_counter()
                seg = logic.process(
                    volume,
                    model,
                    outputSegmentation=seg,
                    defect=args.defect,
                    onProgress=lambda stage, fraction, message, s=stages, t0=start: s.setdefault(
                        stage, time.perf_counter() - t0
                    ),
                )
                wall = time.perf_counter() - start
                compute = float((logic.lastResult.get("timings") or {}).get("total", float("nan")))
                rows.append((n + 1, wall, compute, load, os.getloadavg()[0], logic.workerPid, stages))
            t = time.perf_counter()
            SkullVAELogic.showIn3D(seg)
            skull_surface = time.perf_counter() - t
        finally:
            logic.cleanup()
        check = subprocess.run(
            [sys.executable, "-c", MONAI_CHECK, args.input, str(Path(folder) / "check.seg.nrrd")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
    dims = volume.GetImageData().GetDimensions()
    label = args.model or (f"untrained {args.preset}" if args.preset else "none (rim fit)")
    path = "one child per Apply" if args.one_shot else "warm worker"
    print(f"input {args.input} {dims}, model {label}, {path}, {os.cpu_count()} CPUs")
    for n, wall, compute, before, after, pid, stages in rows:
        print(
            f"Apply {n}: process() -> result in the scene {wall:.2f} s; computation (result JSON) {compute:.2f} s; "
            f"the rest {wall - compute:.2f} s; load average {before:.1f} -> {after:.1f}; worker pid {pid}"
        )
        print("  first progress event per stage (s after process()):", {k: round(v, 1) for k, v in stages.items()})
    print(f"skull surface (built after the result is shown) {skull_surface:.1f} s")
    print(f"implant {logic.lastResult['implantVolumeMm3'] / 1000:.1f} cm³ from {logic.lastResult['implantSource']}")
    print((check.stdout.strip().splitlines() or ["monai check failed: " + check.stderr.strip()[-300:]])[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
