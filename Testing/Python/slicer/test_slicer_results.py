"""The completion result shown the Slicer way, against the real slicer-core wheel: segments that do
not overlap, standard terminology, one implant colour, the implant's surface at once and the
skull's on demand, the implant volume; and the no-model run of the logic (a stand-in child that
writes a result as the CLI does, so the Slicer side is tested whatever state the library is in)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("psutil")
slicerio = pytest.importorskip("slicerio")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_workers (also when `import slicer` loads us)

from SkullVAESlicerLib import logic as logic_module  # noqa: E402
from SkullVAESlicerLib import nodes, results  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic, gammaApplies, sourceText  # noqa: E402
from SkullVAESlicerLib.process import buildCompleteArguments  # noqa: E402
from slicer_workers import install_fake_worker, worker_leftovers  # noqa: E402
from slicerio.segmentation import terminology_entry_from_string  # noqa: E402

from SkullVAELib.core.config import IMPLANT_COLOR  # noqa: E402

SPACING = 3.2


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A phantom with a cranial defect, and a result file as `skullvae complete` writes it."""
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask
    from SkullVAELib.io.segfile import Segment, write_segmentation

    folder = tmp_path_factory.mktemp("case")
    complete = make_phantom(3, shape=(48, 48, 40), spacing=(SPACING,) * 3)
    defective, implant = cranial_defect(complete, seed=1)
    write_mask(defective, folder / "defective.nrrd")
    # as `skullvae complete` writes it now, and as an older library wrote it (overlapping segments)
    write_segmentation(
        folder / "result.seg.nrrd",
        defective,
        [Segment("Patient bone", defective.mask), Segment("Implant", implant.mask)],
    )
    old = [Segment("Completed skull", defective.mask | implant.mask), Segment("Implant", implant.mask)]
    write_segmentation(folder / "old.seg.nrrd", defective, old)
    return {"folder": folder, "defective": defective.mask, "implant": implant.mask}


def _array(seg_node, name) -> np.ndarray:
    mask, _ = results._mask(seg_node.GetSegmentation(), name)
    return mask


def _tag(segment) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), value)
    return str(value)


def _filled(scene, case, name="result.seg.nrrd", tmp=None):
    """Load a result file the way the logic does (header made labelmap-only, read into the output, then
    split and styled in place)."""
    import shutil
    import tempfile

    copy = Path(tmp or tempfile.mkdtemp()) / name
    shutil.copyfile(case["folder"] / name, copy)
    nodes.onlyLabelmapOnLoad(copy)
    volume = nodes.readVolume(scene, case["folder"] / "defective.nrrd", "defective")
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    nodes.readSegmentationInto(output, copy)
    results.showResult(output, volume)
    return volume, output


@pytest.mark.parametrize("name", ["result.seg.nrrd", "old.seg.nrrd"])
def test_segments_do_not_overlap_and_keep_every_voxel(scene, case, name):
    _, output = _filled(scene, case, name)
    segmentation = output.GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    assert names == {"Patient bone", "Implant"}
    assert segmentation.GetNumberOfLayers() == 1  # non-overlapping segments share one labelmap
    bone, implant = _array(output, "Patient bone"), _array(output, "Implant")
    assert implant.sum() == case["implant"].sum() > 0
    assert bone.sum() == case["defective"].sum()
    assert not (bone & implant).any()


def test_terminology_and_the_one_implant_colour(scene, case):
    _, output = _filled(scene, case)
    segmentation = output.GetSegmentation()
    codes = {}
    for name in ("Patient bone", "Implant"):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
        tag = _tag(segment)
        entry = terminology_entry_from_string(tag)
        codes[name] = (entry["category"][:2], entry["type"][:2])
    assert codes["Patient bone"] == (["SCT", "123037004"], ["SCT", "89546000"])  # bone structure of cranium
    assert codes["Implant"] == (["SCT", "260787004"], ["SCT", "40388003"])  # physical object: implant
    implant = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Implant"))
    np.testing.assert_allclose(implant.GetColor(), IMPLANT_COLOR)
    from SkullVAELib.io.segfile import DEFAULT_COLORS  # the library's files use the same colour

    assert DEFAULT_COLORS["Implant"] == IMPLANT_COLOR


def test_terminology_survives_a_save_and_load(scene, case, tmp_path):
    _, output = _filled(scene, case)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "saved.seg.nrrd"))
    assert storage.WriteData(output)
    saved = slicerio.read_segmentation(str(tmp_path / "saved.seg.nrrd"), skip_voxels=True)
    by_name = {s["name"]: s for s in saved["segments"]}
    assert by_name["Implant"]["terminology"]["type"][1] == "40388003"
    assert by_name["Patient bone"]["terminology"]["type"][1] == "89546000"


def test_labelmap_only_header_keeps_every_voxel(case, tmp_path):
    import shutil

    copy = tmp_path / "r.seg.nrrd"
    shutil.copyfile(case["folder"] / "result.seg.nrrd", copy)
    before = slicerio.read_segmentation(str(copy))
    assert "Closed surface" in before["containedRepresentationNames"]  # what the library writes
    assert nodes.onlyLabelmapOnLoad(copy) and not nodes.onlyLabelmapOnLoad(copy)  # once; then nothing to do
    after = slicerio.read_segmentation(str(copy))
    assert after["containedRepresentationNames"] == ["Binary labelmap"]
    assert np.array_equal(before["voxels"], after["voxels"]) and before["segments"] == after["segments"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.seg.nrrd"]


def test_implant_surface_at_once_the_skull_only_on_demand(scene, case):
    _, output = _filled(scene, case)
    assert results.hasSurface(output, "Implant")
    assert not results.hasSurface(output, "Patient bone")  # a whole skull: built only when shown
    assert output.GetDisplayNode().GetPreferredDisplayRepresentationName3D() == "Closed surface"
    SkullVAELogic.showIn3D(output)
    assert results.hasSurface(output, "Patient bone")
    assert output.GetSegmentation().ContainsRepresentation("Closed surface")


def test_the_implant_surface_from_its_box_is_the_whole_labelmaps(scene, case):
    """The implant is converted from its voxels cropped to their box: the very surface the conversion
    of the whole shared labelmap gives (same points, same triangles)."""
    from vtk.util import numpy_support

    surfaces = []
    for cropped in (True, False):
        _, output = _filled(scene, case)
        segmentation = output.GetSegmentation()
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Implant"))
        if not cropped:
            segment.RemoveRepresentation("Closed surface")
            rule = results._surfaceRule(segmentation)
            rule.PreConvert(segmentation)
            rule.Convert(segment)
            rule.PostConvert(segmentation)
        surface = segment.GetRepresentation("Closed surface")
        points = numpy_support.vtk_to_numpy(surface.GetPoints().GetData())
        surfaces.append((surface.GetNumberOfCells(), points[np.lexsort(points.T)]))
    (cells, points), (wholeCells, wholePoints) = surfaces
    assert cells == wholeCells > 0 and points.shape == wholePoints.shape
    np.testing.assert_allclose(points, wholePoints, atol=1e-6)
    bone = _segment(output, "Patient bone")
    copy = numpy_support.vtk_to_numpy(results.croppedLabelmap(bone).GetPointData().GetScalars())
    assert set(np.unique(copy)) == {0, bone.GetLabelValue()}  # the implant's label is cleared in the copy
    assert results.croppedLabelmap(_segment(output, "Implant")).GetNumberOfPoints() < _array(output, "Implant").size


def _segment(output, name):
    segmentation = output.GetSegmentation()
    return segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))


def test_reading_into_an_existing_output_replaces_its_segments(scene, case, tmp_path):
    _, output = _filled(scene, case)
    output.GetSegmentation().AddEmptySegment("an old one")
    nodes.readSegmentationInto(output, case["folder"] / "result.seg.nrrd")
    names = {output.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)}
    assert output.GetSegmentation().GetNumberOfSegments() == 2 and names == {"Patient bone", "Implant"}
    assert _array(output, "Implant").sum() == case["implant"].sum()
    with pytest.raises(RuntimeError, match="cannot be read"):
        nodes.readSegmentationInto(output, tmp_path / "missing.seg.nrrd")


def test_implant_volume_in_mm3(scene, case):
    _, output = _filled(scene, case)
    expected = case["implant"].sum() * SPACING**3
    assert results.segmentVolumeMm3(output, "Implant") == pytest.approx(expected, rel=1e-9)
    assert results.segmentVolumeMm3(output, "Missing") == 0.0


def test_completed_skull_only_on_request(scene, case):
    _, output = _filled(scene, case)
    assert not output.GetSegmentation().GetSegmentIdBySegmentName("Completed skull")
    SkullVAELogic.addCompletedSkull(output)
    completed = _array(output, "Completed skull")
    assert completed.sum() == (case["defective"] | case["implant"]).sum()
    segment = output.GetSegmentation().GetSegment(output.GetSegmentation().GetSegmentIdBySegmentName("Completed skull"))
    assert "89546000" in _tag(segment)
    assert _array(output, "Patient bone").sum() == case["defective"].sum()  # the others are untouched


def test_a_result_without_an_implant_segment_is_refused(scene, case, tmp_path):
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation

    like = read_skull(case["folder"] / "defective.nrrd")
    write_segmentation(tmp_path / "bad.seg.nrrd", like, [Segment("Completed skull", like.mask)])
    segmentation = nodes.loadSegmentationFile(scene, tmp_path / "bad.seg.nrrd")
    with pytest.raises(RuntimeError, match="lacks the segment"):
        results.splitResult(segmentation)


# --- the logic without a model ---------------------------------------------------------------
FAKE_COMPLETE = """
import shutil
shutil.copyfile({result!r}, args[args.index("--output") + 1])
print(json.dumps({{"stage": "rimfit", "fraction": 0.5, "message": "fitting"}}), flush=True)
print(json.dumps({{"stage": "done", "fraction": 1.0, "message": "", "result": {record}}}), flush=True)
"""


def test_no_model_runs_without_a_model_argument(scene, case, private_tmp, monkeypatch, logic):
    """A stand-in worker writes the result as `skullvae complete` does; the requests carry no --model."""
    seen = []
    record = {"defect": "cranial", "implant_source": "rimfit", "gamma_used": False, "implant_volume_mm3": 1.0}
    install_fake_worker(
        monkeypatch, FAKE_COMPLETE.format(result=str(case["folder"] / "result.seg.nrrd"), record=repr(record))
    )

    def arguments(*args, **kwargs):
        seen.append(buildCompleteArguments(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(logic_module, "buildCompleteArguments", arguments)
    volume = nodes.readVolume(scene, case["folder"] / "defective.nrrd", "defective")
    for model in (None, "", "   "):
        seg = logic.process(volume, model, defect="cranial")
        assert "--model" not in seen[-1]
        assert logic.lastResult["implantSource"] == "rimfit" and logic.lastResult["gammaUsed"] is False
        # the panel's volume is measured on the loaded segment, not copied from the child
        assert logic.lastResult["implantVolumeMm3"] == pytest.approx(case["implant"].sum() * SPACING**3)
        assert seg.GetSegmentation().GetSegmentIdBySegmentName("Patient bone")
    assert worker_leftovers(private_tmp, logic) == []


def test_gamma_is_enabled_only_where_the_model_makes_the_implant():
    assert not gammaApplies(None) and not gammaApplies("") and not gammaApplies(".")
    assert not gammaApplies("/models/m", "cranial")  # rimfit comes first and makes it
    assert not gammaApplies("/models/m", "cranial", ("rimfit", "model"))
    assert gammaApplies("/models/m", "cranial", ("model", "rimfit"))  # the model comes first
    assert gammaApplies("/models/m", "cranial", "learned,atlas,model")  # no rimfit
    assert gammaApplies("/models/m", "facial")
    assert gammaApplies("/models/m", "auto")
    assert not gammaApplies("/models/m", "facial", ("rimfit", "learned", "atlas"))  # no model source
    assert not gammaApplies("/models/m", "facial", "model,nonsense")  # a bad list: nothing runs
    assert "no model" in sourceText("rimfit") and "γ" in sourceText("model")
    assert sourceText("something-new") == "something-new"
    assert "mirrored side" in sourceText("rimfit", "mirror") and "shape bank" in sourceText("rimfit", "shapes")
    assert "shape model" in sourceText("rimfit", "model")
    both = sourceText("rimfit", "mirror, shapes")
    assert "mirrored side and the training skulls" in both and sourceText("rimfit", "") == sourceText("rimfit")


def test_the_panel_shows_the_implant_quality_and_its_explanation():
    """Issue 24 §1: the panel shows the quality score (volume line) and its one-line explanation (log)."""
    note = (
        "implant quality 0.92 (weakest: thickness): outer surface step at the rim 0.3 mm, thickness step 0.5 mm, "
        "covers 100 % of the hole, its middle lies 37 mm from the rim"
    )
    summary = {"implantSource": "rimfit", "implantVoxels": 1000, "implantVolumeMm3": 49600.0}
    parts = {"components": {"surface": 0.978, "thickness": 0.936, "coverage": 1.0}, "measures": {"reach_mm": 37.3}}
    summary.update(implant_quality=0.915, implant_quality_note=note, implant_quality_parts=parts)
    assert results.qualityText(summary) == "quality 0.92 (weakest: thickness)"
    assert results.volumeText(summary) == "Implant volume: 49.6 cm³; quality 0.92 (weakest: thickness)"
    lines = results.summaryLines(summary, "cranial")
    assert lines[-1] == "I" + note[1:] and "37 mm from the rim" in lines[-1]
    without = {"implantSource": "rimfit", "implantVoxels": 1000, "implantVolumeMm3": 49600.0, "implant_quality": None}
    assert results.qualityText(without) == "" and results.volumeText(without) == "Implant volume: 49.6 cm³"
    assert results.volumeText({}) == ""
    flagged = dict(summary, implant_quality=0.41, implant_review=True)
    assert results.qualityText(flagged) == "quality 0.41 (weakest: thickness), check before use"
    assert not any("quality" in line for line in results.summaryLines(without, "cranial"))
    empty = dict(summary, implantVoxels=0, implantVolumeMm3=0.0)
    assert not any(line.startswith("Implant quality") for line in results.summaryLines(empty, "cranial"))


def test_the_panel_shows_the_rim_fits_self_check_only_when_it_ran():
    """The self-check (``--self-check``): its estimate on the volume line, its note in the log after the
    quality note."""
    note = "the rim fit, tried on 6 intact places of this skull's vault with the hole's outline, scored DSC 0.93 there"
    summary = {"implantSource": "rimfit", "implantVoxels": 1000, "implantVolumeMm3": 49600.0}
    summary.update(implant_quality_note="implant quality 0.92", implant_self_check_note=note)
    lines = results.summaryLines(summary, "cranial")
    assert lines[-2] == "Implant quality 0.92" and lines[-1] == "T" + note[1:]
    checked = dict(summary, implant_self_check={"dsc": 0.9312, "places": 6, "lowest": 0.9, "highest": 0.95})
    assert results.volumeText(checked) == "Implant volume: 49.6 cm³; self-check DSC 0.93"
    assert results.volumeText(dict(checked, implant_quality=0.915)) == (
        "Implant volume: 49.6 cm³; quality 0.92; self-check DSC 0.93"
    )
    assert results.volumeText(dict(checked, implant_self_check=None)) == "Implant volume: 49.6 cm³"
    assert not any(
        "self" in line or "tried on" in line
        for line in results.summaryLines(dict(summary, implant_self_check_note=""), "cranial")
    )
