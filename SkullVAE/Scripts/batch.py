"""Headless skull completion with the SkullVAE module's logic.

    Slicer --no-main-window --python-script SkullVAE/Scripts/batch.py \\
        --input defective.nrrd --output completed.seg.nrrd [--model MODEL_DIR] \\
        [--implant-stl implant.stl] [--gamma 1.0] [--defect auto|cranial|facial] \\
        [--input-kind auto|binary|ct] [--hu-threshold 300] [--cpu] [--timeout SECONDS] [--sources residual,rimfit,learned,atlas,model] \\
        [--no-mirror] [--self-check] [--smooth-mm MM] [--margin-mm MM] [--min-thickness-mm MM]

Loads the input (volume, or a .seg.nrrd segmentation), runs ``SkullVAELogic(warmWorker=False).process``
(blocking, one ``skullvae complete`` child; without ``--model`` a cranial defect gets the model-free
rim fit; the implant options are ``skullvae complete``'s, in its words), saves the
segmentation through the library's atomic writer (an unpredictable, exclusively created
temporary name, then a rename) and the implant STL. An output that is the input (also through
a link) is refused. Exit code: 0 done, 2 bad input, 1 any other failure (124 after
``--timeout``). Outside Slicer it also runs with plain Python and the slicer-core wheel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Scripts/ sits next to the helper package (installed and source layouts alike).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SkullVAESlicerLib import nodes  # noqa: E402  (importing it makes SkullVAELib importable too)
from SkullVAESlicerLib.logic import INPUT_KINDS, SkullVAELogic, SkullVAETimeout  # noqa: E402

from SkullVAELib.core.config import DEFECT_CHOICES, GAMMA_RANGE, IMPLANT_SOURCES  # noqa: E402  (the vocabulary)
from SkullVAELib.core.errors import SkullVAEError  # noqa: E402


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch.py", description="SkullVAE skull completion without the GUI")
    parser.add_argument("--input", required=True, help="defective skull: CT/binary volume or .seg.nrrd")
    parser.add_argument(
        "--model", default=None, help="model bundle folder or installed model name (default: none, the rim fit)"
    )
    parser.add_argument("--output", required=True, help="output segmentation (.seg.nrrd)")
    parser.add_argument("--implant-stl", help="also write the implant surface as STL")
    parser.add_argument("--gamma", type=float, default=1.0, help="γ in {:g}..{:g} (default 1)".format(*GAMMA_RANGE))
    parser.add_argument("--defect", choices=DEFECT_CHOICES, default="auto")
    parser.add_argument(
        "--input-kind", choices=INPUT_KINDS, default="auto", help="how a volume's values are read (skullvae complete)"
    )
    parser.add_argument("--hu-threshold", type=float, default=300.0, help="bone threshold for CT input (HU)")
    parser.add_argument(
        "--segment",
        action="append",
        metavar="NAME",
        help="the skull's segment: a .seg.nrrd input's by name or id, a label map's by its value (repeat for several; "
        "default: the only one)",
    )
    parser.add_argument("--cpu", action="store_true", help="force CPU")
    parser.add_argument("--timeout", type=float, default=None, help="stop the completion after this many seconds")
    parser.add_argument(
        "--sources", default=",".join(IMPLANT_SOURCES), help="implant sources in the order to try (skullvae complete)"
    )
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True, help="rimfit's mirror cue")
    parser.add_argument("--self-check", action="store_true", help="rimfit tried on the intact vault (the log says how)")
    parser.add_argument("--smooth-mm", type=float, default=0.0, help="smooth the implant (Gaussian σ, mm; 0 = off)")
    parser.add_argument("--margin-mm", type=float, default=0.0, help="gap between implant and bone (mm; 0 = off)")
    parser.add_argument("--min-thickness-mm", type=float, default=0.0, help="remove thinner implant parts (mm)")
    return parser


def loadInput(scene, path: Path):
    """A volume node, or a segmentation node for .seg.nrrd files."""
    import slicer

    if not path.is_file():
        raise ValueError(f"{path}: input file not found")
    if path.name.lower().endswith(".seg.nrrd"):
        node = slicer.vtkMRMLSegmentationNode()
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise ValueError(f"{path}: cannot read this segmentation")
        node.SetName(path.name[: -len(".seg.nrrd")])
        scene.AddNode(node)
        return node
    return nodes.readVolume(scene, path)


def saveSegmentation(node, path: Path) -> None:
    """Write a .seg.nrrd through the library's atomic writer: the storage node writes a new,
    exclusively created temporary of unpredictable name next to ``path`` (a planted link is never
    followed), which is then renamed; a failed write leaves no partial file."""
    import slicer

    from SkullVAELib.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise RuntimeError(f"{path}: cannot write the segmentation")


def sameFile(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file (links followed, hard links included)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def runBatch(argv: list[str] | None = None, scene=None, log=print) -> int:
    """Parse, load, complete, save. Returns the exit code (0 ok, 2 bad input, 1 failure)."""
    try:
        args = buildParser().parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    output = Path(args.output)
    if not output.name.lower().endswith(".seg.nrrd"):
        log(f"batch.py: error: {output}: output must end with .seg.nrrd")
        return 2
    for other, what in ((args.input, "--input"), (args.implant_stl, "--implant-stl")):
        if other and sameFile(output, Path(other)):
            log(f"batch.py: error: {output}: --output is the same file as {what}; choose another output")
            return 2
    if args.implant_stl and sameFile(Path(args.implant_stl), Path(args.input)):
        log(f"batch.py: error: {args.implant_stl}: --implant-stl is the same file as --input")
        return 2
    logics = None
    if scene is None:
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            scene, logics = nodes.createCoreScene()
    try:
        inputNode = loadInput(scene, Path(args.input))
        logic = SkullVAELogic(warmWorker=False)  # one completion: one child, nothing left running
        logic.logCallback = log
        seg = logic.process(
            inputNode,
            args.model,
            gamma=args.gamma,
            defect=args.defect,
            boneThresholdHU=args.hu_threshold,
            inputKind=args.input_kind,
            segmentIds=args.segment,
            forceCPU=args.cpu,
            sources=args.sources,
            mirror=args.mirror,
            selfCheck=args.self_check,
            smoothMm=args.smooth_mm,
            marginMm=args.margin_mm,
            minThicknessMm=args.min_thickness_mm,
            waitForCompletion=True,
            timeout=args.timeout,
        )
        saveSegmentation(seg, output)
        log(f"Wrote {output}")
        if args.implant_stl:
            log(f"Wrote {logic.exportImplantStl(seg, args.implant_stl)}")
    except ValueError as exc:
        log(f"batch.py: error: {exc}")
        return 2
    except SkullVAETimeout as exc:
        log(f"batch.py: failed: {exc}")
        return 124
    except SkullVAEError as exc:  # the atomic writer's one-line errors (read-only folder, disk full)
        log(f"batch.py: error: {exc}")
        return 2
    except Exception as exc:  # noqa: BLE001 - every other failure is exit code 1 with its message
        log(f"batch.py: failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        del logics
    return 0


def main() -> None:
    def log(text: str) -> None:
        print(text, flush=True)

    sys.exit(runBatch(sys.argv[1:], log=log))


if __name__ == "__main__":
    main()
