"""The panel's rules, decided without Qt (``SkullVAESlicerLib.options``) and only applied by the widget,
against the real slicer-core wheel:

1. the mirror checkbox stays enabled while a source that reads the mirror cue can serve: ``rimfit``, and
   the learned cranial residual (``residual``), which corrects the rim fit and reads the mirrored bone;
2. the input kind of ``skullvae complete --input-kind`` (auto, binary, ct) is a panel parameter passed
   through the logic to the child: a CBCT stored as 0..255, which "auto" takes for a mask (all bone,
   refused), completes once forced to "ct" with a threshold in its own units.
"""

from __future__ import annotations

import argparse
import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))

from SkullVAESlicerLib import nodes, options  # noqa: E402

from SkullVAELib.core.config import IMPLANT_SOURCES  # noqa: E402

UI_FILE = REPO / "Resources" / "UI" / "SkullVAE.ui"
MODULE = REPO / "SkullVAE" / "SkullVAE.py"
WIDGET = REPO / "SkullVAE" / "SkullVAESlicerLib" / "widget.py"
SAMPLE = REPO / "Resources" / "SampleData" / "SkullVAE-phantom-cranial-defect.nrrd"
CBCT_BONE, CBCT_AIR, CBCT_THRESHOLD = 200, 8, 128  # a CBCT's grey values (uint8), not HU

# fixtures scene, private_tmp: conftest.py


@pytest.fixture(scope="module")
def cbct_file(tmp_path_factory) -> Path:
    """The sample phantom (a cranial defect, 128×128×96 voxels of 1.6 mm) as a CBCT stored as uint8: bone
    200, everything else 8 (no value 0, as a scan's air is never exactly 0)."""
    from SkullVAELib.io.image import read_skull, write_itk_nrrd

    skull = read_skull(SAMPLE)
    scan = np.where(skull.mask, CBCT_BONE, CBCT_AIR).astype(np.uint8)
    path = tmp_path_factory.mktemp("cbct") / "cbct.nrrd"
    write_itk_nrrd(skull.to_sitk(scan, pixel_type=np.uint8), path)
    return path


def _update_buttons() -> ast.FunctionDef:
    """The widget's ``SkullVAEPanel.updateButtons``, parsed."""
    tree = ast.parse(WIDGET.read_text())
    return next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "updateButtons")


def _assigned(function: ast.FunctionDef, target: str) -> str:
    """The source of the expression assigned to ``target`` (e.g. "self.ui.mirrorCheckBox.enabled") in ``function``."""
    values = [
        ast.unparse(node.value)
        for node in ast.walk(function)
        if isinstance(node, ast.Assign) and target in {ast.unparse(t) for t in node.targets}
    ]
    assert len(values) == 1, f"{target}: {values}"
    return values[0]


# --- 1. the mirror cue ------------------------------------------------------------------------------
def test_the_mirror_stays_enabled_while_the_residual_can_use_it():
    assert options.mirrorApplies("/models/m", "auto", ("residual",))  # the residual alone: it reads the mirror
    assert options.mirrorApplies("/models/m", "cranial", "residual,learned,model")
    assert options.mirrorApplies("/models/m", "cranial", ("model", "residual"))
    assert options.mirrorApplies("", "auto", ("rimfit",)) and options.mirrorApplies(None, "cranial")  # no model needed
    assert not options.mirrorApplies("", "cranial", ("residual",))  # the residual needs a model folder
    assert not options.mirrorApplies(".", "auto", ("residual", "model"))  # an unset Path reads "."
    assert not options.mirrorApplies("/models/m", "facial")  # both fill cranial defects only
    assert not options.mirrorApplies("/models/m", "auto", ("learned", "atlas", "model"))  # none of them reads it
    assert not options.mirrorApplies("/models/m", "auto", "residual,nonsense")  # a bad list: nothing runs
    # the self-check checks rimfit's own fill: not the residual's
    assert options.selfCheckApplies("auto", ("rimfit",)) and options.selfCheckApplies("cranial", ("residual", "rimfit"))
    assert not options.selfCheckApplies("cranial", ("residual",)) and not options.selfCheckApplies("facial")


def test_the_mirror_sources_are_those_of_the_library_that_read_it():
    """A source reads the mirror cue when its code runs the rim fit or asks for the mirror transform."""
    folder = REPO / "SkullVAELib" / "implant" / "sources"
    readers = {
        word
        for word in IMPLANT_SOURCES
        if any(call in (folder / f"{word}.py").read_text() for call in ("rim_fit()", "mirror_transform()"))
    }
    assert readers == set(options.MIRROR_SOURCES) == {"residual", "rimfit"}


def test_the_widget_applies_the_rules_of_options():
    block = _update_buttons()
    assert "options.mirrorApplies(" in _assigned(block, "self.ui.mirrorCheckBox.enabled")
    assert "options.selfCheckApplies(" in _assigned(block, "self.ui.selfCheckCheckBox.enabled")
    assert "options.inputKindApplies(" in _assigned(block, "self.ui.inputKindComboBox.enabled")
    assert "options.boneThresholdApplies(" in _assigned(block, "self.ui.boneThresholdSpinBox.enabled")
    assert "'rimfit' in sources" not in ast.unparse(block)  # the old rule, which greyed the mirror out for the residual


# --- 2. the input kind ------------------------------------------------------------------------------
def _cli_input_kinds() -> tuple[str, ...]:
    from SkullVAELib.cli import complete

    parser = argparse.ArgumentParser()
    complete.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["complete"]
    return tuple(next(a for a in sub._actions if "--input-kind" in a.option_strings).choices)


def test_the_input_kind_is_the_clis_in_the_panel():
    """One combo box, bound to the parameter ``inputKind``, offers exactly ``--input-kind``'s words; the
    widget passes it to ``process(inputKind=)``."""
    assert options.INPUT_KINDS == _cli_input_kinds() == ("auto", "binary", "ct")
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SkullVAEParameterNode")
    field = next(s for s in cls.body if isinstance(s, ast.AnnAssign) and s.target.id == "inputKind")
    assert (ast.unparse(field.annotation), field.value.value) == ("Annotated[str, Choice(list(INPUT_KINDS))]", "auto")
    combo = next(w for w in ET.parse(UI_FILE).getroot().iter("widget") if w.get("name") == "inputKindComboBox")
    assert combo.get("class") == "QComboBox"
    assert tuple(i.findtext("property/string") for i in combo.findall("item")) == options.INPUT_KINDS
    bound = next(p for p in combo.findall("property") if p.get("name") == "SlicerParameterName")
    assert bound.findtext("string") == "inputKind"
    calls = [n for n in ast.walk(ast.parse(WIDGET.read_text())) if isinstance(n, ast.Call)]
    keywords = {
        k.arg: ast.unparse(k.value) for c in calls if getattr(c.func, "attr", "") == "process" for k in c.keywords
    }
    assert keywords["inputKind"] == "params.inputKind"


def test_batch_offers_the_input_kind():
    import importlib.util

    spec = importlib.util.spec_from_file_location("skullvae_batch_kind", REPO / "SkullVAE" / "Scripts" / "batch.py")
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    parser = batch.buildParser()
    assert parser.parse_args(["--input", "a", "--output", "b", "--input-kind", "ct"]).input_kind == "ct"
    assert parser.parse_args(["--input", "a", "--output", "b"]).input_kind == "auto"


def test_the_input_kind_follows_the_input_node(scene, cbct_file):
    volume = nodes.readVolume(scene, cbct_file, "cbct")
    labelmap = nodes.readVolume(scene, cbct_file, "labels", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "skull")
    assert [options.inputKindFor(volume, kind) for kind in options.INPUT_KINDS] == list(options.INPUT_KINDS)
    assert options.inputKindFor(labelmap, "ct") == options.inputKindFor(segmentation, "ct") == "binary"  # masks
    with pytest.raises(ValueError, match="input kind must be one of auto, binary, ct, got 'cbct'"):
        options.inputKindFor(volume, "cbct")
    assert options.inputKindApplies(volume) and options.boneThresholdApplies(volume, None, "ct")
    assert not options.boneThresholdApplies(volume, None, "binary")  # a mask has no threshold
    assert not options.inputKindApplies(labelmap) and not options.inputKindApplies(volume, segmentation)
    assert not options.inputKindApplies(None) and not options.boneThresholdApplies(None, None, "ct")


def test_a_cbct_forced_to_ct_completes(scene, cbct_file, private_tmp, logic):
    """The panel's path (warm worker): "auto" reads the uint8 CBCT as a mask, all of it bone, and is refused;
    "ct" with a threshold in the scan's units reads the skull and the rim fit fills its cranial defect."""
    volume = nodes.readVolume(scene, cbct_file, "cbct")
    with pytest.raises(ValueError, match="all-bone mask"):
        logic.process(volume, defect="cranial", sources="rimfit", forceCPU=True, timeout=300)
    assert logic.lastArguments[logic.lastArguments.index("--input-kind") + 1] == "auto"
    with pytest.raises(ValueError, match="input kind must be one of"):
        logic.process(volume, inputKind="CT")  # refused before anything starts
    chosen = dict(defect="cranial", sources="rimfit", inputKind="ct", boneThresholdHU=CBCT_THRESHOLD)
    seg = logic.process(volume, forceCPU=True, timeout=300, **chosen)
    arguments = logic.lastArguments
    assert arguments[arguments.index("--input-kind") + 1] == "ct"
    assert float(arguments[arguments.index("--hu-threshold") + 1]) == CBCT_THRESHOLD
    assert logic.lastResult["implantSource"] == "rimfit" and logic.lastResult["implantVolumeMm3"] > 0
    labelled = logic.process(
        volume, forceCPU=True, timeout=300, segmentIds=str(CBCT_BONE), **dict(chosen, inputKind="auto")
    )
    arguments = logic.lastArguments
    assert arguments[arguments.index("--segment") + 1] == str(CBCT_BONE)  # the scan read as a map of its values
    assert logic.lastResult["implantVolumeMm3"] > 0 and labelled is not None
    assert seg.GetSegmentation().GetSegmentIdBySegmentName("Implant")


def test_a_label_map_of_several_labels_needs_the_skulls_label(scene, cbct_file, logic):
    """A labelmap volume whose voxels hold several labels (here the scan's 8 and 200; a skull and a brain read
    together as bone close a cranial hole) is refused before anything starts, naming them; a chosen label, or a
    label map of one label, passes."""
    from SkullVAESlicerLib import inputs

    labelmap = nodes.readVolume(scene, cbct_file, "labels", labelmap=True)
    before = nodes.nodeIds(scene)
    with pytest.raises(
        ValueError, match=r"'labels' is a label map of 2 labels \(8 .*, 200 .*\): choose the skull's label"
    ):
        logic.process(labelmap, defect="cranial", sources="rimfit", forceCPU=True, timeout=300)
    assert nodes.nodeIds(scene) == before and logic.lastResult is None
    inputs.checkLabelChoice(labelmap, (str(CBCT_BONE),))
    inputs.checkLabelChoice(nodes.readVolume(scene, SAMPLE, "skull", labelmap=True))
    inputs.checkLabelChoice(nodes.readVolume(scene, cbct_file, "scan"))  # a scalar volume: the library reads it


def test_a_model_is_named_with_what_to_do(scene, logic):
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "skull surface")
    with pytest.raises(ValueError, match="'skull surface' is a model .*Convert model to segmentation node"):
        logic.process(model, forceCPU=True, timeout=300)
