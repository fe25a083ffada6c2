"""Where the Slicer logic puts a result and what it takes as input, against the real slicer-core wheel:
the input's parent transform, one output per input, a segmentation's bone segments and the grid they
are written on, the quality flag, one report of a run that cannot start, and no result of an earlier
run left behind. A stand-in worker writes the result as `skullvae complete` does (fast); the clipping
test runs the real one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("psutil")
vtk = pytest.importorskip("vtk")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_workers (also when `import slicer` loads us)

from SkullVAESlicerLib import inputs, nodes, outputs, results  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402
from slicer_workers import install_fake_worker, worker_leftovers  # noqa: E402

GEOMETRY = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()

# the stand-in worker: the result file and an uncertainty map (when asked) on the input's grid; it keeps
# a copy of the input it was sent ({keep}); {code} = 1 fails like a crashed child
FAKE = """
import shutil
shutil.copyfile(args[args.index("--input") + 1], {keep!r})
if {code} == 0:
    shutil.copyfile({result!r}, args[args.index("--output") + 1])
    if "--uncertainty" in args:
        shutil.copyfile({defective!r}, args[args.index("--uncertainty") + 1])
    print(json.dumps({{"stage": "done", "fraction": 1.0, "message": "", "result": {{"implant_source": "rimfit"}}}}))
else:
    print("skullvae: error: boom", file=sys.stderr, flush=True)
code = {code}
"""


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A phantom with a cranial defect (binary NRRD) and a result file on its grid."""
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask
    from SkullVAELib.io.segfile import Segment, write_segmentation

    folder = tmp_path_factory.mktemp("placement")
    defective, implant = cranial_defect(make_phantom(3, shape=(48, 48, 40), spacing=(3.2,) * 3), seed=1)
    write_mask(defective, folder / "defective.nrrd")
    segments = [Segment("Patient bone", defective.mask), Segment("Implant", implant.mask)]
    write_segmentation(folder / "result.seg.nrrd", defective, segments)
    return folder


@pytest.fixture
def logic():
    instance = SkullVAELogic()
    instance.logCallback = lambda text: instance.logged.append(text)
    instance.logged = []
    yield instance
    instance.cleanup()


def fake(monkeypatch, case, tmp_path, code=0) -> Path:
    """Install the stand-in worker; returns where it keeps a copy of the input it was sent."""
    keep = tmp_path / "sent.nrrd"
    body = FAKE.format(keep=str(keep), code=code, result=str(case / "result.seg.nrrd"), defective=str(case / "defective.nrrd"))  # fmt: skip
    install_fake_worker(monkeypatch, body)
    return keep


def as_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def translated(scene, node, offset=(50.0, -20.0, 7.0)):
    """Put ``node`` under a new linear transform (a registration moved it)."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "alignment")
    matrix = vtk.vtkMatrix4x4()
    for axis, value in enumerate(offset):
        matrix.SetElement(axis, 3, value)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def skull_segmentation(scene, case, name="skull seg"):
    """A segmentation of the defective skull (one segment "skull", reference geometry = its grid)."""
    labelmap = nodes.readVolume(scene, case / "defective.nrrd", f"{name} label", labelmap=True)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("skull")
    return seg, labelmap


def implant_points(seg) -> np.ndarray:
    """World (RAS) centres of the "Implant" voxels, sorted."""
    mask, image = results._mask(seg.GetSegmentation(), "Implant")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    extent = image.GetExtent()
    k, j, i = np.nonzero(mask)
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)])
    points = (as_numpy(matrix) @ ijk)[:3].T
    return points[np.lexsort(points.T)]


def voxels(path) -> int:
    """Non-zero voxels of an image file."""
    from SkullVAELib.io.image import read_skull

    return int(read_skull(path).mask.sum())


# --- 1. the input's parent transform ------------------------------------------------------------
def test_the_result_follows_the_inputs_parent_transform(scene, case, tmp_path, monkeypatch, private_tmp, logic):
    fake(monkeypatch, case, tmp_path)
    volume = nodes.readVolume(scene, case / "defective.nrrd", "ct")
    transform = translated(scene, volume)
    seg = logic.process(volume, None, uncertainty=True)
    assert seg.GetTransformNodeID() == transform.GetID()
    assert logic.uncertaintyVolume.GetTransformNodeID() == transform.GetID()
    # the reference geometry is the input's own grid; in the world both lie where the input does
    own = slicer.vtkSegmentationConverter.SerializeImageGeometry(nodes.ijkToRas(volume), volume.GetImageData())
    assert seg.GetSegmentation().GetConversionParameter(GEOMETRY) == own
    _, image = results._mask(seg.GetSegmentation(), "Patient bone")
    grid = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(grid)
    np.testing.assert_allclose(as_numpy(grid), as_numpy(nodes.ijkToRas(volume)), atol=1e-9)
    inWorld, mapWorld = [0.0] * 6, [0.0] * 6
    volume.GetRASBounds(inWorld), logic.uncertaintyVolume.GetRASBounds(mapWorld)
    np.testing.assert_allclose(mapWorld, inWorld, atol=1e-6)
    # a segmentation input under a transform: the same, with the segmentation's own reference geometry
    seg_in, _ = skull_segmentation(scene, case)
    translated(scene, seg_in, (-5.0, 3.0, 11.0))
    out = logic.process(seg_in, None)
    assert out.GetTransformNodeID() == seg_in.GetTransformNodeID()
    reference = seg_in.GetSegmentation().GetConversionParameter(GEOMETRY)
    assert np.allclose(
        [float(v) for v in out.GetSegmentation().GetConversionParameter(GEOMETRY).split(";") if v],
        [float(v) for v in reference.split(";") if v],
    )
    assert worker_leftovers(private_tmp, logic) == []


# --- 2. one output per input ----------------------------------------------------------------------
def test_a_second_input_gets_its_own_output(scene, case, tmp_path, monkeypatch, private_tmp, logic):
    fake(monkeypatch, case, tmp_path)
    a = nodes.readVolume(scene, case / "defective.nrrd", "PatientA_CT")
    b = nodes.readVolume(scene, case / "defective.nrrd", "PatientB_CT")
    first = logic.process(a, None)
    # the panel keeps the last output selected: Apply on patient B must not overwrite patient A's result
    second = logic.process(b, None, outputSegmentation=first)
    assert second is not first and second.GetName() == "PatientB_CT completion"
    assert first.GetScene() is scene and first.GetName() == "PatientA_CT completion"
    assert any("holds the result of 'PatientA_CT'" in line for line in logic.logged)
    assert outputs.outputFor(b, first) is None and outputs.outputFor(a, first) is first
    # its own output is filled again; so is a node the user made and chose
    assert logic.process(a, None, outputSegmentation=first) is first
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my implant")
    assert logic.process(b, None, outputSegmentation=mine) is mine and mine.GetName() == "my implant"
    assert worker_leftovers(private_tmp, logic) == []


# --- 3. a segmentation without a reference geometry: room for the missing bone ----------------------
def vertex_defect(folder: Path):
    """A phantom skull without its top (a vertex defect) as a binary NRRD and as a .seg.nrrd."""
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask
    from SkullVAELib.io.segfile import Segment, write_segmentation

    skull = make_phantom(1, (64, 64, 48), (3.0, 3.0, 3.0))
    mask = skull.mask.copy()
    top = np.nonzero(mask.any(axis=(0, 1)))[0].max()
    ci, cj = (int(np.mean(np.nonzero(mask[:, :, top])[a])) for a in (0, 1))
    i, j, k = np.indices(mask.shape)
    mask[((i - ci) ** 2 + (j - cj) ** 2 < 81) & (k > top - 8)] = False
    defective = skull.with_mask(mask, title="defective")
    write_mask(defective, folder / "vertex.nrrd")
    write_segmentation(folder / "vertex.seg.nrrd", defective, [Segment("Skull", mask)])
    return folder / "vertex.nrrd", folder / "vertex.seg.nrrd"


def test_the_grid_of_a_segmentation_without_reference_has_room_around_the_bone(scene, tmp_path):
    _, segFile = vertex_defect(tmp_path)
    seg = slicer.vtkMRMLSegmentationNode()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(segFile))
    assert storage.ReadData(seg) and not seg.GetSegmentation().GetConversionParameter(GEOMETRY)
    scene.AddNode(seg)
    geometry = inputs.exportGeometry(seg, inputs.boneSegmentIds(seg))
    image = seg.GetSegmentation().GetNthSegment(0).GetRepresentation("Binary labelmap")
    matrix, theirs = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    geometry.GetImageToWorldMatrix(matrix), image.GetImageToWorldMatrix(theirs)
    np.testing.assert_allclose(as_numpy(matrix), as_numpy(theirs))  # the bone's own lattice
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(seg.GetSegmentation().GetNthSegmentID(0))
    box = seg.GetSegmentation().DetermineCommonLabelmapGeometry(slicer.vtkSegmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS, ids)  # fmt: skip
    box = [int(v) for v in box.split(";")[16:22]]
    pad = int(np.ceil(inputs.BONE_MARGIN_MM / 3.0))
    extent = geometry.GetExtent()
    assert all(extent[2 * a] <= box[2 * a] - pad and extent[2 * a + 1] >= box[2 * a + 1] + pad for a in range(3))


@pytest.mark.skipif(not (REPO / "SkullVAELib" / "cli" / "complete.py").is_file(), reason="no skullvae complete")
def test_an_implant_from_a_segmentation_without_reference_is_not_clipped(scene, tmp_path, private_tmp, logic):
    """The same vertex defect as a volume and as a .seg.nrrd read without a reference geometry: the
    same implant (a grid cut tight around the remaining bone lost the implant's top)."""
    volumeFile, segFile = vertex_defect(tmp_path)
    volume = nodes.readVolume(scene, volumeFile, "vertex")
    seg = slicer.vtkMRMLSegmentationNode()
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(segFile))
    assert storage.ReadData(seg)
    seg.SetName("vertex seg")
    scene.AddNode(seg)
    fromVolume = logic.process(volume, None, defect="cranial", forceCPU=True, timeout=300)
    fromSegmentation = logic.process(seg, None, defect="cranial", forceCPU=True, timeout=300)
    fromVolume, fromSegmentation = implant_points(fromVolume), implant_points(fromSegmentation)
    assert len(fromVolume) > 0 and len(fromSegmentation) == len(fromVolume)
    np.testing.assert_allclose(fromSegmentation, fromVolume, atol=1e-6)  # the same voxels, top included
    assert worker_leftovers(private_tmp, logic) == []


# --- 4. which segments are bone -------------------------------------------------------------------
def add_ball(seg) -> tuple[str, int, int]:
    """Add a visible segment "Brain" (a ball inside the skull); returns (its id, its voxels, skull ∪ ball)."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    seg.GetBinaryLabelmapRepresentation(seg.GetSegmentation().GetNthSegmentID(0), image)
    skull = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()) > 0
    ball = slicer.vtkOrientedImageData()
    ball.DeepCopy(image)
    dims = ball.GetDimensions()
    k, j, i = np.mgrid[0 : dims[2], 0 : dims[1], 0 : dims[0]]
    inside = (((i - dims[0] // 2) ** 2 + (j - dims[1] // 2) ** 2 + (k - dims[2] // 2) ** 2) < 64).ravel()
    numpy_support.vtk_to_numpy(ball.GetPointData().GetScalars())[:] = inside
    ball.Modified()
    brain = seg.GetSegmentation().AddEmptySegment("Brain", "Brain")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(ball, seg, brain, logic.MODE_REPLACE)
    return brain, int(inside.sum()), int((inside | skull).sum())


def test_only_the_chosen_or_visible_segments_are_bone(scene, case, tmp_path, monkeypatch, private_tmp, logic):
    sent = fake(monkeypatch, case, tmp_path)
    seg, _ = skull_segmentation(scene, case)
    skull = voxels(case / "defective.nrrd")
    brain, ball, both = add_ball(seg)
    assert 0 < ball and skull < both
    logic.process(seg, None)  # both visible: both are taken, and the log says so
    assert voxels(sent) == both and "Skull: the segment(s) 'skull', 'Brain' of 'skull seg'" in logic.logged
    seg.GetDisplayNode().SetSegmentVisibility(brain, False)
    logic.process(seg, None)  # a hidden segment is not bone
    assert voxels(sent) == skull and "Skull: the segment(s) 'skull' of 'skull seg'" in logic.logged
    logic.process(seg, None, segmentIds=[brain])  # the caller's choice, by id or by name
    assert voxels(sent) == ball
    logic.process(seg, None, segmentIds="skull")
    assert voxels(sent) == skull
    with pytest.raises(ValueError, match="no segment 'Tumour'"):
        logic.process(seg, None, segmentIds=["skull", "Tumour"])
    seg.GetDisplayNode().SetSegmentVisibility(seg.GetSegmentation().GetNthSegmentID(0), False)
    with pytest.raises(ValueError, match="every segment is hidden"):
        logic.process(seg, None)
    assert worker_leftovers(private_tmp, logic) == []


# --- 5. the quality flag ----------------------------------------------------------------------------
def test_every_delivered_implant_under_one_half_is_flagged():
    from SkullVAELib.pipeline.completer import QUALITY_FLOOR, REVIEW_BELOW

    assert (results.DOUBTFUL_BELOW, results.REVIEW_BELOW) == (QUALITY_FLOOR, REVIEW_BELOW)
    base = {"implantSource": "rimfit", "implantVoxels": 1000, "implantVolumeMm3": 49600.0}
    assert results.qualityText(dict(base, implant_quality=0.21)) == "quality 0.21, doubtful, check before use"
    assert results.qualityText(dict(base, implant_quality=0.45)) == "quality 0.45, check before use"
    assert (
        results.qualityText(dict(base, implant_quality=0.41, implant_review=True)) == "quality 0.41, check before use"
    )
    assert results.qualityText(dict(base, implant_quality=0.5)) == "quality 0.50"
    assert results.volumeText(dict(base, implant_quality=0.1)).endswith("quality 0.10, doubtful, check before use")


# --- 6. a run that cannot start is reported once ------------------------------------------------------
def test_a_run_that_cannot_start_is_reported_once(scene, case, private_tmp, monkeypatch, logic):
    from SkullVAESlicerLib import logic as logic_module

    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty skull")
    empty.GetSegmentation().AddEmptySegment("bone")
    volume = nodes.readVolume(scene, case / "defective.nrrd", "ct")
    monkeypatch.setattr(logic_module, "buildWorkerCommand", lambda python=None: [str(private_tmp / "no-python")])
    for node in (empty, volume):  # the input cannot be written; the worker cannot be started
        calls = []
        with pytest.raises((ValueError, OSError, RuntimeError)):
            logic.process(node, None, waitForCompletion=False, onFinished=lambda n, e, c=calls: c.append(e))
        assert calls == [] and not logic.isRunning
    assert sorted(private_tmp.iterdir()) == []


# --- 7. nothing of an earlier run stays ---------------------------------------------------------------
def test_no_result_of_an_earlier_run_stays(scene, case, tmp_path, monkeypatch, private_tmp, logic):
    fake(monkeypatch, case, tmp_path)
    volume = nodes.readVolume(scene, case / "defective.nrrd", "ct")
    logic.process(volume, None, uncertainty=True)
    assert logic.lastResult["implantSource"] == "rimfit" and logic.uncertaintyVolume is not None
    logic.process(volume, None)  # no uncertainty map this time: none is pointed to
    assert logic.lastResult is not None and logic.uncertaintyVolume is None
    logic.process(volume, None, uncertainty=True)
    fake(monkeypatch, case, tmp_path, code=1)
    logic.stopWorker()  # the next run starts the failing stand-in
    with pytest.raises(RuntimeError, match="boom"):
        logic.process(volume, None, uncertainty=True)
    assert logic.lastResult is None and logic.uncertaintyVolume is None
    assert worker_leftovers(private_tmp, logic) == []
