"""`skullvae complete`: defective skull(s) in; patient bone + implant (.seg.nrrd), STL, map out.

Everything is checked and computed before the first file is written, so a bad input writes
nothing. ``--progress json`` prints one JSON object per line on stdout and ends with
``{"stage": "done", "fraction": 1.0, "message": ..., "result": {...}}``. The work is
:func:`SkullVAELib.workflows.complete.complete_files` (one input) and
:func:`SkullVAELib.workflows.complete_batch.complete_batch` (several, one Completer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from SkullVAELib.cli.common import (
    add_progress_arg,
    close_progress,
    finite_float,
    gamma_list,
    make_progress,
    positive_int,
    threads_arg,
)
from SkullVAELib.cli.completion_args import add_completion_args, add_model_args, completion_settings
from SkullVAELib.core.config import GAMMA_RANGE, INPUT_KINDS, MESH_VOXEL_MM
from SkullVAELib.core.errors import SkullVAEError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "complete",
        help="complete a defective skull and design its implant",
        description="Complete defective skulls and write the patient's bone and the implant as a Slicer "
        "segmentation on each input's exact geometry. Cranial defects need no trained model (the rim fit); "
        "facial defects need the learned refiner, an atlas set or a model.",
    )
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="defective skull(s): binary masks or CTs (.nrrd, .nii.gz, .mha, ...), a DICOM series' folder, a "
        "Slicer segmentation, a closed surface (.stl, .obj, .ply), or one folder of them (a batch)",
    )
    p.add_argument("--output", required=True, help="result segmentation (.seg.nrrd); for a batch, a folder")
    add_model_args(p)
    low, high = GAMMA_RANGE
    p.add_argument(
        "--gamma",
        default="1.0",
        help=f"γ of the model source in {low:g}..{high:g}, or a comma-"
        "separated sweep like 0,0.5,1,1.5 (one file per γ)",
    )
    p.add_argument("--implant-stl", help="also write the implant surface (binary STL, mm); for a batch, a folder")
    p.add_argument(
        "--stl-frame",
        choices=("LPS", "RAS"),
        default="LPS",
        help="STL coordinates of --implant-stl, and of an input surface whose header names none (Slicer reads LPS)",
    )
    p.add_argument(
        "--mesh-voxel-mm",
        type=finite_float,
        default=MESH_VOXEL_MM,
        help="an input surface (.stl, .obj, .ply) is voxelized at this size (mm) before it is completed",
    )
    p.add_argument("--uncertainty", help="also write the model's bone frequency over K samples (float NRRD)")
    p.add_argument("--samples", type=positive_int, default=None, help="K for --uncertainty (default 10)")
    p.add_argument("--raw", action="store_true", help="completed skull = the model's raw decoded skull (the paper)")
    p.add_argument(
        "--completed-segment",
        action="store_true",
        help="also write the completed skull (patient bone ∪ implant) as a third, overlapping segment",
    )
    p.add_argument(
        "--input-kind",
        choices=INPUT_KINDS,
        default="auto",
        help="binary mask, CT in HU (thresholded at --hu-threshold), or auto (decided from the values)",
    )
    p.add_argument("--hu-threshold", type=finite_float, default=300.0, help="bone threshold for CT input (HU)")
    p.add_argument(
        "--segment",
        action="append",
        metavar="NAME",
        help="the skull's segment where the input holds several: a segment's name in a .seg.nrrd, a label value in "
        "a label map (repeat for several; default: the only one there is)",
    )
    p.add_argument(
        "--series",
        metavar="NUMBER",
        help="a DICOM folder's series where it holds several: its series number, description or UID",
    )
    p.add_argument(
        "--threads",
        type=threads_arg,
        default=None,
        help="CPU threads for torch, ITK and the BLAS pools (at most the CPU count; 0 = the libraries' defaults)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="batch: cases completed at once, one worker process each (default: as many as the CPU cores "
        "and --max-memory-gb allow; 1: one after the other in one process)",
    )
    add_completion_args(p)
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows.complete import DEFAULT_SAMPLES, OutputOptions, SkullReading
    from SkullVAELib.workflows.complete_batch import batch_inputs, complete_batch

    gammas = gamma_list(args.gamma)
    if args.samples is not None and not args.uncertainty:  # the samples make only the uncertainty map
        raise SkullVAEError("--samples is the sample count of --uncertainty; give --uncertainty FILE too")
    samples = args.samples if args.samples is not None else (DEFAULT_SAMPLES if args.uncertainty else 0)
    settings = completion_settings(args, gamma=gammas[0], samples=samples, raw=args.raw)
    inputs = batch_inputs(args.input)
    options = OutputOptions(
        implant_stl=Path(args.implant_stl) if args.implant_stl else None,
        stl_frame=args.stl_frame,
        uncertainty=Path(args.uncertainty) if args.uncertainty else None,
        completed_segment=args.completed_segment,
    )
    progress = make_progress(args.progress)
    try:
        done = complete_batch(
            settings,
            inputs,
            Path(args.output),
            gammas,
            options=options,
            reading=SkullReading(
                args.input_kind,
                args.hu_threshold,
                tuple(args.segment or ()),
                args.series,
                mesh_voxel_mm=args.mesh_voxel_mm,
                stl_frame=args.stl_frame,
            ),
            threads=args.threads,
            jobs=args.jobs,
            owns_process=getattr(args, "owns_process", False),
            into_folder=len(args.input) == 1 and Path(args.input[0]).is_dir() and inputs != [Path(args.input[0])],
            progress=progress,
        )
    finally:
        close_progress(progress)
    for warning in done.warnings:
        print(f"skullvae complete: warning: {warning}", file=sys.stderr)
    if args.progress == "json":
        sys.stdout.write(json.dumps({"stage": "done", "fraction": 1.0, "message": done.message, "result": done.record}))
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    for s in done.results:
        print(f"wrote {s['output']} (γ = {s['gamma']:g}): implant {s['implant_volume_mm3'] / 1000:.1f} cm³")
    if done.record.get("montage"):
        print(f"wrote {done.record['montage']}")
    print(done.message)
    return 0
