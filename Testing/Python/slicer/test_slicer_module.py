"""The Slicer module's logic against real Slicer core (slicer-core wheel: MRML scene, storage
nodes, segmentations logic), through the same warm-worker path the panel uses (the one-shot child
of batch.py as well)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
psutil = pytest.importorskip("psutil")
vtk = pytest.importorskip("vtk")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_workers (also when `import slicer` loads us)

from SkullVAESlicerLib import logic as logic_module  # noqa: E402
from SkullVAESlicerLib import nodes, results  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402
from SkullVAESlicerLib.process import ChildProcess, buildCompleteCommand, parseLine  # noqa: E402
from slicer_workers import worker_leftovers  # noqa: E402

needs_cli = pytest.mark.skipif(
    not (REPO / "SkullVAELib" / "cli" / "complete.py").is_file(), reason="skullvae complete not written yet"
)


def cli_runs_without_a_model() -> bool:
    """Whether `skullvae complete` accepts a call without --model (the pipeline's model-free Completer)."""
    import argparse

    from SkullVAELib.cli import complete

    parser = argparse.ArgumentParser()
    complete.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["complete"]
    return not next(a for a in sub._actions if "--model" in a.option_strings).required


needs_model_free_cli = pytest.mark.skipif(
    not cli_runs_without_a_model(), reason="skullvae complete still requires --model (the pipeline's Completer)"
)


# fixtures scene, tiny_model, phantom_file, private_tmp: conftest.py


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def labelmap_matrix(seg_node, name) -> vtk.vtkMatrix4x4:
    segmentation = seg_node.GetSegmentation()
    image = slicer.vtkOrientedImageData()
    seg_node.GetBinaryLabelmapRepresentation(segmentation.GetSegmentIdBySegmentName(name), image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return matrix


def as_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# --- end to end ----------------------------------------------------------------------
@needs_cli
def test_phantom_volume_completes_into_segmentation(scene, tiny_model, phantom_file, private_tmp, tmp_path, logic):
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    before = node_ids(scene)
    stages = []
    seg = logic.process(volume, tiny_model, gamma=1.0, onProgress=lambda s, f, m: stages.append(s))

    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetScene() is scene
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert set(names) == {"Patient bone", "Implant"}
    colors = {n: segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(n)).GetColor() for n in names}
    assert colors["Patient bone"] != colors["Implant"]
    assert np.allclose(colors["Implant"], results.SEGMENT_COLORS["Implant"])
    # geometry: the result's labelmap lies on the input's voxel grid
    np.testing.assert_allclose(
        as_numpy(labelmap_matrix(seg, "Patient bone")), as_numpy(nodes.ijkToRas(volume)), atol=1e-9
    )
    assert results.hasSurface(seg, "Implant") or results.segmentVoxelCount(seg, "Implant") == 0
    # subject hierarchy: under the input
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemByDataNode(volume)
    assert "done" in stages
    # only the output node (plus its display node) was added; temp files are gone
    added = node_ids(scene) - before
    assert all(
        scene.GetNodeByID(i).IsA("vtkMRMLSegmentationNode") or "Display" in scene.GetNodeByID(i).GetClassName()
        for i in added
    )
    assert worker_leftovers(private_tmp, logic) == []  # the run's files are gone; the worker waits
    # STL of the implant
    stl = logic.exportImplantStl(seg, tmp_path / "out" / "implant.stl")
    reader = vtk.vtkSTLReader()
    reader.SetFileName(stl)
    reader.Update()
    assert (
        reader.GetOutput().GetNumberOfPoints() > 0
        or segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Implant"))
        .GetRepresentation("Closed surface")
        .GetNumberOfPoints()
        == 0
    )


@needs_cli
def test_segmentation_input_and_existing_output(scene, tiny_model, phantom_file, private_tmp, logic):
    labelmap = nodes.readVolume(scene, phantom_file, "phantom label", labelmap=True)
    seg_in = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "skull segmentation")
    seg_in.CreateDefaultDisplayNodes()
    seg_in.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_in)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my output")
    before = node_ids(scene)
    result = logic.process(seg_in, str(tiny_model), outputSegmentation=output, defect="cranial")
    assert result is output
    assert output.GetSegmentation().GetSegmentIdBySegmentName("Implant")
    np.testing.assert_allclose(
        as_numpy(labelmap_matrix(output, "Patient bone")), as_numpy(nodes.ijkToRas(labelmap)), atol=1e-9
    )
    assert node_ids(scene) - before <= {d.GetID() for d in [output.GetDisplayNode()] if d}
    assert worker_leftovers(private_tmp, logic) == []


@pytest.mark.skullfix
@needs_cli
def test_skullfix_case_completes_on_its_geometry(scene, tiny_model, skullfix_dir, private_tmp, logic):
    volume = nodes.readVolume(scene, skullfix_dir / "defective_skull" / "070.nrrd", "070")
    seg = logic.process(volume, tiny_model, defect="cranial")
    np.testing.assert_allclose(as_numpy(labelmap_matrix(seg, "Implant")), as_numpy(nodes.ijkToRas(volume)), atol=1e-9)
    assert worker_leftovers(private_tmp, logic) == []


@pytest.mark.skullfix
@needs_model_free_cli
def test_skullfix_validation_case_completes_without_a_model(scene, skullfix_dir, private_tmp, logic):
    """Issue 23's 'done when': a real cranial case (validation 056), no model, segments that do not
    overlap, with terminology, the implant's source and volume reported."""
    volume = nodes.readVolume(scene, skullfix_dir / "defective_skull" / "056.nrrd", "056")
    seg = logic.process(volume, None, defect="cranial")
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1  # patient bone and implant do not overlap
    for name in ("Patient bone", "Implant"):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        assert segment.HasTag(segment.GetTerminologyEntryTagName()), name
    assert logic.lastResult["implantSource"] == "rimfit" and not logic.lastResult["gammaUsed"]
    assert logic.lastResult["implantVolumeMm3"] > 1000  # a SkullFix cranial implant is tens of cm³
    assert logic.lastResult["implant_quality"] > 0.5  # seamless at the rim
    assert "mm from the rim" in logic.lastResult["implant_quality_note"]
    np.testing.assert_allclose(as_numpy(labelmap_matrix(seg, "Implant")), as_numpy(nodes.ijkToRas(volume)), atol=1e-9)
    assert worker_leftovers(private_tmp, logic) == []


# --- bad input: a clear exception, the scene as it was, no temp files -----------------
def _assert_untouched(scene, before, private_tmp, logic=None):
    assert node_ids(scene) == before
    assert (worker_leftovers(private_tmp, logic) if logic else sorted(private_tmp.iterdir())) == []


@pytest.mark.parametrize("model", [None, "", "   "])
def test_no_model_means_no_model_argument(model):
    args = buildCompleteCommand("in.nrrd", model, "out.seg.nrrd")
    assert "--model" not in args and args[args.index("--input") + 1] == "in.nrrd"
    with_model = buildCompleteCommand("in.nrrd", "/models/m", "out.seg.nrrd")
    assert with_model[with_model.index("--model") + 1] == "/models/m"


def test_folder_that_is_not_a_bundle(scene, phantom_file, private_tmp, tmp_path):
    volume = nodes.readVolume(scene, phantom_file)
    (tmp_path / "not_a_model").mkdir()
    before = node_ids(scene)
    with pytest.raises(ValueError, match="not a SkullVAE model bundle"):
        SkullVAELogic().process(volume, tmp_path / "not_a_model")
    with pytest.raises(ValueError, match="model folder not found"):
        SkullVAELogic().process(volume, tmp_path / "missing")
    _assert_untouched(scene, before, private_tmp)


def test_no_input(tiny_model):
    with pytest.raises(ValueError, match="No input"):
        SkullVAELogic().process(None, tiny_model)


def test_empty_segmentation(scene, tiny_model, phantom_file, private_tmp):
    volume = nodes.readVolume(scene, phantom_file)
    seg_in = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    seg_in.CreateDefaultDisplayNodes()
    seg_in.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    before = node_ids(scene)
    with pytest.raises(ValueError, match="no segments"):
        SkullVAELogic().process(seg_in, tiny_model)
    seg_in.GetSegmentation().AddEmptySegment("bone")
    with pytest.raises(ValueError, match="is empty"):
        SkullVAELogic().process(seg_in, tiny_model)
    _assert_untouched(scene, before, private_tmp)


@needs_cli
def test_input_neither_binary_nor_ct(scene, tiny_model, private_tmp, logic):
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mr-like")
    image = vtk.vtkImageData()
    image.SetDimensions(24, 24, 16)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    from vtk.util.numpy_support import vtk_to_numpy

    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.linspace(0.5, 900.5, 24 * 24 * 16, dtype=np.float32)
    volume.SetAndObserveImageData(image)
    before = node_ids(scene)
    with pytest.raises(ValueError, match=r"'mr-like': neither a binary mask .* nor a CT"):
        logic.process(volume, tiny_model)  # the worker's one-line error (exit code 2); it stays warm
    _assert_untouched(scene, before, private_tmp, logic)
    assert logic.workerPid is not None


@needs_cli
def test_failing_subprocess(scene, phantom_file, private_tmp, tmp_path, logic):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    volume = nodes.readVolume(scene, phantom_file)
    before = node_ids(scene)
    errors = []
    with pytest.raises((ValueError, RuntimeError)) as info:
        logic.process(  # facial: the model is needed (a cranial defect takes the model-free rim fit)
            volume, broken, defect="facial", onFinished=lambda node, error: errors.append((node, error))
        )
    assert str(broken) in str(info.value) or "config" in str(info.value)
    assert errors and errors[0][0] is None and errors[0][1] is info.value
    _assert_untouched(scene, before, private_tmp, logic)


# --- cancel: the process tree dies; the run ends as cancelled --------------------------
SLEEPER = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def test_cancel_kills_the_process_tree():
    child = ChildProcess([sys.executable, "-c", SLEEPER])
    grandchild = int(child.events.get(timeout=60).message)
    assert psutil.pid_exists(grandchild)
    child.kill()
    outcome = child.wait(timeout=60)
    assert outcome.cancelled and outcome.returnCode != 0
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE


def test_progress_lines_are_parsed():
    event = parseLine('{"stage": "encode", "fraction": 0.5, "message": "half"}\n')
    assert (event.stage, event.fraction, event.message, event.result) == ("encode", 0.5, "half", None)
    done = parseLine('{"stage": "done", "fraction": 1.0, "message": "", "result": {"defect": "cranial"}}')
    assert done.result == {"defect": "cranial"}
    assert parseLine("skullvae complete: error: x").fraction is None
    assert parseLine("{broken").message == "{broken"


# --- headless batch script -----------------------------------------------------------
def _batch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("skullvae_batch", REPO / "SkullVAE" / "Scripts" / "batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_cli
def test_batch_writes_segmentation_and_stl(tiny_model, phantom_file, tmp_path, private_tmp):
    batch = _batch_module()
    out = tmp_path / "out" / "phantom.seg.nrrd"
    stl = tmp_path / "out" / "implant.stl"
    lines = []
    code = batch.runBatch(
        ["--input", str(phantom_file), "--model", str(tiny_model), "--output", str(out), "--implant-stl", str(stl)],
        log=lines.append,
    )
    assert code == 0, lines
    assert out.is_file() and stl.is_file()
    import slicerio

    segmentation = slicerio.read_segmentation(str(out), skip_voxels=True)
    assert {s["name"] for s in segmentation["segments"]} == {"Patient bone", "Implant"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["implant.stl", "phantom.seg.nrrd"]
    assert list(private_tmp.iterdir()) == []


@needs_cli
def test_batch_self_check_reaches_the_log(tmp_path):
    """``batch.py --self-check``: the rim fit's check on the intact vault reaches the log (no model needed), on the
    sample data's phantom with a cranial defect (a complete phantom has no vault hole to check)."""
    batch = _batch_module()
    lines = []
    out = tmp_path / "phantom.seg.nrrd"
    defective = REPO / "Resources" / "SampleData" / "SkullVAE-phantom-cranial-defect.nrrd"
    assert batch.runBatch(["--input", str(defective), "--output", str(out), "--self-check"], log=lines.append) == 0
    assert any(line.startswith("The rim fit") and "this skull" in line for line in lines), lines


@needs_cli
def test_batch_reads_a_segmentation_by_the_segment_named(tmp_path):
    """A .seg.nrrd of the skull and a brain, read by the batch script (no display node: no visible segments to go
    by): refused without ``--segment`` (exit 2: every segment would be bone, the brain's too), completed from the
    named one with it."""
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation

    defective = read_skull(REPO / "Resources" / "SampleData" / "SkullVAE-phantom-cranial-defect.nrrd")
    brain = np.zeros(defective.shape, dtype=bool)
    brain[tuple(slice(n // 3, 2 * n // 3) for n in defective.shape)] = True
    source = tmp_path / "two.seg.nrrd"
    write_segmentation(source, defective, [Segment("Skull", defective.mask), Segment("Brain", brain & ~defective.mask)])
    batch, lines, out = _batch_module(), [], tmp_path / "out.seg.nrrd"
    assert batch.runBatch(["--input", str(source), "--output", str(out)], log=lines.append) == 2
    assert any("holds 2 segments ('Skull', 'Brain')" in line for line in lines) and not out.exists()
    assert batch.runBatch(["--input", str(source), "--output", str(out), "--segment", "Skull"], log=lines.append) == 0
    assert any("'Skull'" in line and "Skull:" in line for line in lines), lines
    assert out.is_file()


def test_batch_bad_input_exit_codes(tiny_model, phantom_file, tmp_path):
    batch = _batch_module()
    out = str(tmp_path / "x.seg.nrrd")
    lines = []
    assert (
        batch.runBatch(
            ["--input", str(tmp_path / "nope.nrrd"), "--model", str(tiny_model), "--output", out], log=lines.append
        )
        == 2
    )
    assert (
        batch.runBatch(
            ["--input", str(phantom_file), "--model", str(tiny_model), "--output", "x.nrrd"], log=lines.append
        )
        == 2
    )
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_stl_export_of_a_known_implant(scene, phantom_file, tmp_path):
    labelmap = nodes.readVolume(scene, phantom_file, "implant", labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("Implant")
    assert not nodes.segmentIsEmpty(seg, "Implant")
    path = SkullVAELogic.exportImplantStl(seg, tmp_path / "implant.stl")
    reader = vtk.vtkSTLReader()
    reader.SetFileName(path)
    reader.Update()
    assert reader.GetOutput().GetNumberOfCells() > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["implant.stl"]
    with pytest.raises(ValueError, match="no segment 'Completed skull'"):
        nodes.exportSegmentStl(seg, "Completed skull", tmp_path / "x.stl")


def test_the_one_shot_child_of_batch_is_not_rerun(scene, phantom_file, private_tmp, monkeypatch):
    """``warmWorker=False`` (batch.py): one ``skullvae complete`` child per run, none left running."""
    starts = []

    def fake_command(*args, device="auto", **kwargs):
        starts.append(device)
        code = "import sys; print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB'); sys.exit(1)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(logic_module, "buildCompleteCommand", fake_command)
    volume = nodes.readVolume(scene, phantom_file)
    before = node_ids(scene)
    logic = SkullVAELogic(warmWorker=False)
    with pytest.raises(RuntimeError, match="exit code 1"):
        logic.process(volume)
    assert starts == ["auto"] and logic.workerPid is None
    _assert_untouched(scene, before, private_tmp)
