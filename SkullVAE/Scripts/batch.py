"""Headless skull completion with the SkullVAE module's logic.

    Slicer --no-main-window --python-script SkullVAE/Scripts/batch.py \\
        --input defective.nrrd --model MODEL_DIR --output completed.seg.nrrd \\
        [--implant-stl implant.stl] [--gamma 1.0] [--defect auto|cranial|facial] \\
        [--hu-threshold 300] [--cpu]

Loads the input (volume, or a .seg.nrrd segmentation), runs ``SkullVAELogic().process``
(blocking), saves the segmentation and the implant STL. Exit code: 0 done, 2 bad input,
1 any other failure. Outside Slicer it also runs with plain Python and the slicer-core wheel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Scripts/ sits next to the helper package (installed and source layouts alike).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SkullVAESlicerLib import nodes  # noqa: E402  (importing it makes SkullVAELib importable too)
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402

from SkullVAELib.core.config import DEFECT_CHOICES, GAMMA_RANGE  # noqa: E402  (the library's vocabulary)


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batch.py", description="SkullVAE skull completion without the GUI")
    parser.add_argument("--input", required=True, help="defective skull: CT/binary volume or .seg.nrrd")
    parser.add_argument("--model", required=True, help="model bundle folder (holds config.json)")
    parser.add_argument("--output", required=True, help="output segmentation (.seg.nrrd)")
    parser.add_argument("--implant-stl", help="also write the implant surface as STL")
    parser.add_argument("--gamma", type=float, default=1.0, help="γ in {:g}..{:g} (default 1)".format(*GAMMA_RANGE))
    parser.add_argument("--defect", choices=DEFECT_CHOICES, default="auto")
    parser.add_argument("--hu-threshold", type=float, default=300.0, help="bone threshold for CT input (HU)")
    parser.add_argument("--cpu", action="store_true", help="force CPU")
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
    """Write a .seg.nrrd through a temporary name, so a failed write leaves no partial file."""
    import slicer

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.seg.nrrd")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp))
    try:
        if not storage.WriteData(node):
            raise RuntimeError(f"{path}: cannot write the segmentation")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    logics = None
    if scene is None:
        import slicer

        scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            scene, logics = nodes.createCoreScene()
    try:
        inputNode = loadInput(scene, Path(args.input))
        logic = SkullVAELogic()
        logic.logCallback = log
        seg = logic.process(
            inputNode,
            args.model,
            gamma=args.gamma,
            defect=args.defect,
            boneThresholdHU=args.hu_threshold,
            forceCPU=args.cpu,
            waitForCompletion=True,
        )
        saveSegmentation(seg, output)
        log(f"Wrote {output}")
        if args.implant_stl:
            log(f"Wrote {logic.exportImplantStl(seg, args.implant_stl)}")
    except ValueError as exc:
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
