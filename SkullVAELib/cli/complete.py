"""`skullvae complete`: a defective skull in; completed skull + implant (.seg.nrrd), STL, map out.

Everything is checked and computed before the first file is written, so a bad input
writes nothing. ``--progress json`` prints one JSON object per line on stdout and ends
with ``{"stage": "done", "fraction": 1.0, "message": ..., "result": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from SkullVAELib.cli.common import add_progress_arg, make_progress
from SkullVAELib.config import CompletionConfig
from SkullVAELib.errors import SkullVAEError

DEFAULT_SAMPLES = 10  # uncertainty samples when --uncertainty is given without --samples


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "complete",
        help="complete a defective skull and design its implant",
        description="Complete a defective skull by latent arithmetic (z = μ + γ·DEV) and write the completed "
        "skull and the implant as a Slicer segmentation on the input's exact geometry.",
    )
    p.add_argument("--model", required=True, help="model bundle folder (with completion data for γ ≠ 0)")
    p.add_argument("--input", required=True, help="defective skull: binary mask or CT (.nrrd, .nii.gz, .mha, ...)")
    p.add_argument("--output", required=True, help="result segmentation (.seg.nrrd)")
    p.add_argument("--gamma", default="1.0", help="γ, or a comma-separated sweep like 0,0.25,0.5,0.75,1,1.5")
    p.add_argument("--defect", choices=("auto", "cranial", "facial"), default="auto")
    p.add_argument("--implant-stl", help="also write the implant surface (binary STL, LPS mm)")
    p.add_argument("--stl-frame", choices=("LPS", "RAS"), default="LPS", help="STL coordinates (Slicer reads LPS)")
    p.add_argument("--uncertainty", help="also write the bone frequency over K samples (float NRRD)")
    p.add_argument("--samples", type=int, default=None, help=f"K for --uncertainty (default {DEFAULT_SAMPLES})")
    p.add_argument(
        "--raw", action="store_true", help="completed skull = raw decoded skull (paper); default keeps input bone"
    )
    p.add_argument("--input-kind", choices=("auto", "binary", "ct"), default="auto")
    p.add_argument("--hu-threshold", type=float, default=300.0, help="bone threshold for CT input (HU)")
    p.add_argument("--threshold", type=float, default=0.5, help="bone probability threshold")
    p.add_argument("--min-island", type=float, default=100.0, help="drop implant pieces smaller than this (mm³)")
    p.add_argument("--max-distance", type=float, default=10.0, help="implant pieces must touch the skull within (mm)")
    p.add_argument("--resample", choices=("area", "nearest"), default="area")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ITK")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="network arithmetic: float32 (exact) or bfloat16 (about 2x faster on AVX-512-BF16/AMX CPUs and GPUs)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the uncertainty samples")
    add_progress_arg(p)
    p.set_defaults(func=run)


def parse_gammas(text: str) -> list[float]:
    """ "1" or "0,0.5,1" -> floats; SkullVAEError for anything else."""
    try:
        values = [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise SkullVAEError(f"--gamma must be a number or comma-separated numbers, got {text!r}")
    return values


def sweep_path(output: Path, gamma: float, suffix: str | None = None) -> Path:
    """result.seg.nrrd -> result_g0.50.seg.nrrd (``suffix`` replaces the extension)."""
    name = output.name
    stem, ext = (name[: name.index(".")], name[name.index(".") :]) if "." in name else (name, "")
    return output.with_name(f"{stem}_g{gamma:.2f}{ext if suffix is None else suffix}")


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise SkullVAEError(f"--threads must be >= 1, got {n}")
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


def _write_one(result, output: Path, stl: Path | None, uncertainty: Path | None, frame: str, timings: dict) -> dict:
    from SkullVAELib.image import write_scalar
    from SkullVAELib.segfile import Segment, write_segmentation
    from SkullVAELib.surface import write_implant_stl

    t = time.perf_counter()
    segments = [
        Segment("Completed skull", result.completed.mask, (0.95, 0.92, 0.84)),
        Segment("Implant", result.implant.mask, (1.0, 0.85, 0.0)),
    ]
    write_segmentation(output, result.completed, segments)
    timings["write_segmentation"] = timings.get("write_segmentation", 0.0) + time.perf_counter() - t
    written = {"output": str(output), "implant_stl": None, "uncertainty": None}
    if stl is not None:
        if result.implant.mask.any():
            t = time.perf_counter()
            write_implant_stl(result.implant, stl, coordinate_system=frame)
            timings["write_stl"] = timings.get("write_stl", 0.0) + time.perf_counter() - t
            written["implant_stl"] = str(stl)
        else:
            print(f"skullvae complete: warning: the implant is empty; {stl} not written", file=sys.stderr)
    if uncertainty is not None and result.uncertainty is not None:
        t = time.perf_counter()
        write_scalar(result.completed, result.uncertainty, uncertainty)
        timings["write_uncertainty"] = timings.get("write_uncertainty", 0.0) + time.perf_counter() - t
        written["uncertainty"] = str(uncertainty)
    return written


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.completion import complete
    from SkullVAELib.image import read_skull

    start = time.perf_counter()
    gammas = parse_gammas(args.gamma)
    samples = args.samples if args.samples is not None else (DEFAULT_SAMPLES if args.uncertainty else 0)
    if samples < 0:
        raise SkullVAEError(f"--samples must be >= 0, got {samples}")
    output = Path(args.output)
    if output.is_dir():
        raise SkullVAEError("--output is a folder; give a file name like result.seg.nrrd", output)
    _set_threads(args.threads)
    progress = make_progress(args.progress)
    timings: dict[str, float] = {}

    progress("load", 0.0, "loading the model")
    bundle = ModelBundle.load(args.model, device="cpu")
    if any(g != 0 for g in gammas) and not bundle.centroids:
        raise SkullVAEError(
            "the model has no completion data (centroids); run `skullvae fit-completion` first", args.model
        )
    progress("read", 0.0, f"reading {args.input}")
    t = time.perf_counter()
    skull = read_skull(args.input, kind=args.input_kind, hu_threshold=args.hu_threshold)
    timings["read"] = time.perf_counter() - t

    results = []
    for n, gamma in enumerate(gammas):
        cfg = CompletionConfig(
            gamma=gamma,
            defect=args.defect,
            keep_patient_bone=not args.raw,
            threshold=args.threshold,
            min_island_mm3=args.min_island,
            max_distance_mm=args.max_distance,
            uncertainty_samples=samples,
            resample=args.resample,
            seed=args.seed,
        )

        def stage_progress(stage, fraction, message="", n=n):
            progress(stage, (n + fraction) / len(gammas), message)

        try:
            result = complete(skull, bundle, cfg, device=args.device, progress=stage_progress, precision=args.precision)
        except SkullVAEError as exc:
            raise SkullVAEError(exc.message, exc.path or args.input) from None
        for key, value in result.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        results.append(result)

    progress("write", 0.0, f"writing {output}")
    sweep = len(gammas) > 1
    written = []
    for gamma, result in zip(gammas, results, strict=True):
        out = sweep_path(output, gamma) if sweep else output
        stl = Path(args.implant_stl) if args.implant_stl else None
        unc = Path(args.uncertainty) if args.uncertainty else None
        if sweep:
            stl = sweep_path(stl, gamma) if stl else None
            unc = sweep_path(unc, gamma) if unc else None
        written.append(_write_one(result, out, stl, unc, args.stl_frame, timings))
    montage = None
    if sweep:
        from SkullVAELib.sweep_figure import save_gamma_sweep_png

        montage = output.with_name(output.name.split(".")[0] + "_gamma_sweep.png")
        save_gamma_sweep_png(
            gammas, [r.completed for r in results], [r.implant for r in results], montage, title=Path(args.input).name
        )
    timings["total"] = time.perf_counter() - start

    summaries = [
        {
            **w,
            "gamma": r.gamma,
            "defect": r.defect,
            "confidence": round(r.confidence, 4),
            "implant_volume_mm3": round(r.implant_volume_mm3, 1),
        }
        for w, r in zip(written, results, strict=True)
    ]
    main = summaries[gammas.index(1.0)] if 1.0 in gammas else summaries[-1]
    record = {
        **main,
        "output": str(output) if not sweep else main["output"],
        "results": summaries,
        "montage": None if montage is None else str(montage),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    message = (
        f"{record['defect']} defect ({record['confidence']:.2f}), implant "
        f"{record['implant_volume_mm3'] / 1000:.1f} cm³, {timings['total']:.1f} s"
    )
    if args.progress == "json":
        sys.stdout.write(json.dumps({"stage": "done", "fraction": 1.0, "message": message, "result": record}) + "\n")
        sys.stdout.flush()
    else:
        if hasattr(progress, "close"):
            progress.close()
        for s in summaries:
            print(f"wrote {s['output']} (γ = {s['gamma']:g}): implant {s['implant_volume_mm3'] / 1000:.1f} cm³")
        if montage:
            print(f"wrote {montage}")
        print(message)
    return 0
