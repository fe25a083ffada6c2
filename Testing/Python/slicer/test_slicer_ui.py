"""The panel's .ui file parses, and every widget and parameter name the module uses exists."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
UI_FILE = REPO / "Resources" / "UI" / "SkullVAE.ui"
MODULE = REPO / "SkullVAE" / "SkullVAE.py"
WIDGET = REPO / "SkullVAE" / "SkullVAESlicerLib" / "widget.py"


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def used_ui_names(path: Path) -> set[str]:
    """Names X in ``self.ui.X`` / ``ui.X`` attribute chains of a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
            names.add(node.attr)
    return names


def parameter_fields() -> dict[str, str]:
    """Annotated fields of the @parameterNodeWrapper class: name -> annotation source."""
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SkullVAEParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {s.target.id: ast.unparse(s.annotation) for s in cls.body if isinstance(s, ast.AnnAssign)}


def test_ui_parses_with_unique_names():
    root = ET.parse(UI_FILE).getroot()
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names))
    assert root.find("widget").get("class") == "qMRMLWidget"


def test_every_used_widget_exists():
    widgets = ui_widgets()
    used = used_ui_names(WIDGET) | used_ui_names(MODULE)
    assert {"applyButton", "progressBar", "logTextEdit", "show3DButton", "exportStlButton"} <= used
    missing = sorted(used - set(widgets))
    assert not missing, f"not in {UI_FILE.name}: {missing}"


def test_connect_gui_names_match_parameter_node():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    assert set(bound) == set(fields), (
        f"parameters without widget or widgets without parameter: {set(bound) ^ set(fields)}"
    )


def test_parameter_node_types_and_ranges():
    fields = parameter_fields()
    # γ range and defect choices come from the library's one definition (SkullVAELib.core.config)
    assert fields["gamma"] == "Annotated[float, WithinRange(*GAMMA_RANGE)]"
    assert fields["boneThresholdHU"] == "Annotated[float, WithinRange(-1000, 3000)]"
    assert fields["defectType"] == "Annotated[str, Choice(list(DEFECT_CHOICES))]"
    from SkullVAELib.core.config import DEFECT_CHOICES, GAMMA_RANGE

    assert GAMMA_RANGE == (0.0, 2.0) and DEFECT_CHOICES == ("auto", "cranial", "facial")
    assert fields["outputSegmentation"] == "vtkMRMLSegmentationNode"
    assert fields["inputVolume"] == "vtkMRMLScalarVolumeNode"
    assert fields["modelPath"] == "Path"  # ctkPathLineEdit connects to pathlib.Path only


def test_node_selectors_get_the_scene():
    root = ET.parse(UI_FILE).getroot()
    selectors = {name for name, w in ui_widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    connected = {c.findtext("receiver") for c in root.iter("connection") if "setMRMLScene" in c.findtext("slot")}
    assert selectors and selectors <= connected


def test_module_metadata_and_classes():
    tree = ast.parse(MODULE.read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"SkullVAE", "SkullVAEParameterNode", "SkullVAEWidget", "SkullVAETest"} <= classes
    text = MODULE.read_text()
    assert "SkullVAELogic" in text and 'categories = ["Segmentation"]' in text
    assert re.search(r"research use only", text, re.I) and re.search(r"not a certified medical device", text, re.I)
    assert "slicer.util.loadUI" in text and "childWidgetVariables" in text and "connectGui" in text


def test_model_selector_and_download_button():
    widgets = ui_widgets()
    assert widgets["modelSelectorComboBox"].get("class") == "QComboBox"
    assert widgets["downloadModelButton"].get("class") == "QPushButton"
    assert {"modelSelectorComboBox", "downloadModelButton"} <= used_ui_names(WIDGET)


def test_results_the_slicer_way_in_the_panel():
    widgets = ui_widgets()
    assert widgets["show3DButton"].get("class") == "qMRMLSegmentationShow3DButton"  # Slicer's own Show 3D toggle
    root = ET.parse(UI_FILE).getroot()
    assert "qMRMLSegmentationShow3DButton" in {c.findtext("class") for c in root.iter("customwidget")}
    used = used_ui_names(WIDGET)
    # which source made the implant, its volume, the completed skull on demand
    assert {"implantSourceLabel", "implantVolumeLabel", "completedSkullButton"} <= used
    text = WIDGET.read_text()
    assert "gammaApplies(" in text and "self.ui.gammaSlider.enabled" in text


def test_models_can_be_removed_and_installed_from_a_file():
    widgets = ui_widgets()
    for name in ("removeModelButton", "installModelFileButton"):
        assert widgets[name].get("class") == "QPushButton"
        assert name in used_ui_names(WIDGET)
    text = WIDGET.read_text()
    assert "self.logic.removeModel(" in text and "self.logic.installModel(" in text
    assert "licenceToAccept(" in text and "acceptLicence(" in text and "qt.QSettings()" in text


def test_apply_needs_no_model():
    text = WIDGET.read_text()
    block = text.split("def updateButtons", 1)[1].split("\n    def ", 1)[0]
    assert "self.ui.applyButton.enabled = running or (hasInput and not downloading)" in block


def test_implant_sources_mirror_and_finishing_in_the_panel():
    """The panel speaks the library's words: one bool field and checkbox per implant source, named by
    it; the mirror; smoothing, gap and minimum thickness in mm up to the library's bound."""
    from SkullVAELib.core.config import IMPLANT_SOURCES
    from SkullVAELib.implant.finish import MAX_FINISH_MM

    fields = parameter_fields()
    assert all(fields[word] == "bool" for word in IMPLANT_SOURCES) and fields["mirror"] == "bool"
    for name in ("smoothMm", "marginMm", "minThicknessMm"):
        assert fields[name] == "Annotated[float, WithinRange(0, MAX_FINISH_MM)]"
    module_bound = next(
        n.value.value
        for n in ast.parse(MODULE.read_text()).body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MAX_FINISH_MM"
    )
    assert module_bound == MAX_FINISH_MM  # the panel's bound is the library's
    widgets = ui_widgets()
    for name in ("smoothSpinBox", "marginSpinBox", "minThicknessSpinBox"):
        widget = widgets[name]
        assert widget.get("class") == "QDoubleSpinBox"
        maximum = next(p for p in widget.findall("property") if p.get("name") == "maximum")
        assert float(maximum.findtext("double")) == MAX_FINISH_MM
    texts = {widgets[f"{w}CheckBox" if w != "model" else "modelSourceCheckBox"].find("property/string").text
             for w in IMPLANT_SOURCES}  # fmt: skip
    assert texts == set(IMPLANT_SOURCES)  # each checkbox shows the word itself
    assert "refineImplant" not in UI_FILE.read_text() and "refineImplant" not in MODULE.read_text()


def test_the_panel_passes_sources_mirror_and_finishing_to_process():
    tree = ast.parse(WIDGET.read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "process"
    ]
    keywords = {k.arg: ast.unparse(k.value) for call in calls for k in call.keywords}
    assert keywords["sources"] == "sourcesOf(params)" and keywords["mirror"] == "params.mirror"
    for name in ("smoothMm", "marginMm", "minThicknessMm"):
        assert keywords[name] == f"params.{name}"
    assert not {"refine", "symmetry", "atlas", "learnedRefiner"} & set(keywords)


def test_the_widget_kills_the_warm_worker_on_cleanup_and_quit():
    text = MODULE.read_text()
    cleanup = text.split("    def cleanup(self)", 1)[1].split("\n    def ", 1)[0]
    assert "self.logic.cleanup()" in cleanup
    assert '"aboutToQuit"' in text and "self.logic.cleanup" in text.split("def _connectQuit", 1)[1]
