"""SkullVAE: skull shape completion and implant design in 3D Slicer (scripted module).

The module, its typed parameter node, a thin widget and the self-test live here; the
logic (no Qt, testable under the slicer-core wheel) is ``SkullVAESlicerLib.logic`` and is
re-exported as ``SkullVAELogic``. Inference runs in a separate process
(``PythonSlicer -m SkullVAELib complete``), so Slicer never freezes.

The first supported Slicer is 5.10 (Python 3.12; Python 3.10 is the language floor, checked
by ``vermin`` in the tests). Slicer 5.8 and older ship Python 3.9: there the module stops at
load with one message (:func:`unsupportedMessage`) instead of failing later in a completion.
This check runs before anything of SkullVAE is imported, and this file up to it parses on 3.9.
"""

from __future__ import annotations

import logging
import sys

#: The first 3D Slicer release SkullVAE runs on, and the Python it needs (the README states both).
MINIMUM_SLICER = "5.10"
MINIMUM_PYTHON = (3, 10)


def unsupportedMessage(versionInfo=None):
    """None when this Python runs SkullVAE; else the one message shown at module load."""
    version = tuple(versionInfo or sys.version_info)[:2]
    if version >= MINIMUM_PYTHON:
        return None
    return (
        f"SkullVAE needs 3D Slicer {MINIMUM_SLICER} or newer (Python {MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]}+); "
        f"this Slicer runs Python {version[0]}.{version[1]}. Please install a current Slicer from download.slicer.org."
    )


UNSUPPORTED = unsupportedMessage()
if UNSUPPORTED:  # Slicer <= 5.8: this one message (Slicer's module loader shows it), nothing else loaded
    raise ImportError(UNSUPPORTED)

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import slicer  # noqa: E402
import vtk  # noqa: E402
from SkullVAESlicerLib import resourcePath  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAECancelled, SkullVAELogic  # noqa: E402, F401  (re-exported API)
from SkullVAESlicerLib.options import INPUT_KINDS, modelPathText  # noqa: E402
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

from SkullVAELib.core.config import DEFECT_CHOICES, GAMMA_RANGE  # noqa: E402

#: The panel's upper bound of smoothing, gap and minimum thickness (mm): the library's
#: ``SkullVAELib.implant.finish.MAX_FINISH_MM`` (not imported here: that module needs SciPy; a test
#: checks that both agree).
MAX_FINISH_MM = 20.0


def resourceFile(relative: str) -> str:
    """Resources/<relative> next to this file (installed) or in the repository root (source tree)."""
    return str(resourcePath(relative))


class SkullVAE(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SkullVAE"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SkullVAE contributors"]
        self.parent.helpText = """
Completes a defective skull and designs the implant that fills the defect. Cranial defects need
no model: the implant is fitted to the defect's rim. With a model (an aggregated β-VAE), facial
defects and the paper's latent arithmetic (γ) are available too.<br>
Input: a CT volume (bone found with a HU threshold), a binary skull mask or labelmap, or a skull
segmentation; try <i>Sample Data → SkullVAE</i>. Optionally choose a model, the defect type
(auto, cranial or facial) and γ, then Apply. The output segmentation holds "Patient bone" and
"Implant" (they do not overlap); the panel says which source made the implant and its volume.<br>
<b>For research use only. Not a certified medical device; do not use for diagnosis or treatment.</b>
Implants must be checked and adapted by a qualified person before any use.
"""
        self.parent.acknowledgementText = """
Implements Li, Fragemann, Ahmadi, Kleesiek, Egger: "Training β-VAE by Aggregating a Learned Gaussian
Posterior with a Decoupled Decoder" (skull reconstruction and shape completion). Uses MONAI, PyTorch
and 3D Slicer. SkullFix data: Kodym et al., Data in Brief 35 (2021) 106902, from the AutoImplant 2020
challenge (Li et al., IEEE TMI 2021). Licence: Apache-2.0.
"""
        self.parent.icon = _icon()
        if hasattr(slicer.app, "connect"):  # register the sample data once Slicer has started
            slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData() -> None:
    try:
        from SkullVAESlicerLib.sampledata import registerSampleData

        registerSampleData()
    except Exception as exc:  # noqa: BLE001 - no Sample Data module (e.g. a custom app): the module still works
        logging.getLogger("SkullVAE").warning(f"SkullVAE sample data not registered: {exc}")


def _icon():
    import qt

    return qt.QIcon(resourceFile("Icons/SkullVAE.png"))


@parameterNodeWrapper
class SkullVAEParameterNode:
    """Typed settings of the panel (saved with the scene).

    inputVolume: CT (HU) or binary volume / labelmap.
    inputSegmentation: a skull segmentation; used instead of inputVolume when set.
    inputKind: how the input volume's values are read, ``skullvae complete --input-kind`` (``INPUT_KINDS``):
        auto (decided from the values), binary (nonzero = bone) or ct (bone = values >= boneThresholdHU; e.g. a
        CBCT that auto takes for a mask or refuses). A labelmap or a segmentation is always binary.
    boneThresholdHU: bone threshold for CT input.
    modelPath: model bundle folder.
    defectType: auto / cranial / facial (``SkullVAELib.core.config.DEFECT_CHOICES``).
    gamma: γ in ``SkullVAELib.core.config.GAMMA_RANGE`` (0..2; 1 = paper).
    forceCPU: run on CPU even with a GPU.
    uncertainty: also produce an uncertainty map.
    residual, rimfit, learned, atlas, model: which implant sources to try, in the library's order and words
        (``skullvae complete --sources``; ``SkullVAELib.core.config.IMPLANT_SOURCES``): one field per
        source, named by it (the panel passes ``sourcesOf(params)`` to ``process(sources=...)``).
    mirror: let rimfit and residual use the skull's mirror image (``--mirror``).
    selfCheck: try rimfit's fill on the hole's outline moved over the intact vault (``--self-check``).
    smoothMm, marginMm, minThicknessMm: finishing for manufacture in mm, 0 = off (``--smooth-mm``,
        ``--margin-mm``: the gap between implant and patient bone, ``--min-thickness-mm``).
    outputSegmentation: receives "Patient bone" and "Implant".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    inputKind: Annotated[str, Choice(list(INPUT_KINDS))] = "auto"
    boneThresholdHU: Annotated[float, WithinRange(-1000, 3000)] = 300
    modelPath: Path  # a ctkPathLineEdit binds to pathlib.Path only; Path(".") means "not chosen"
    defectType: Annotated[str, Choice(list(DEFECT_CHOICES))] = "auto"
    gamma: Annotated[float, WithinRange(*GAMMA_RANGE)] = 1.0
    forceCPU: bool = False
    uncertainty: bool = False
    residual: bool = True
    rimfit: bool = True
    learned: bool = True
    atlas: bool = True
    model: bool = True
    mirror: bool = True
    selfCheck: bool = False
    smoothMm: Annotated[float, WithinRange(0, MAX_FINISH_MM)] = 0.0
    marginMm: Annotated[float, WithinRange(0, MAX_FINISH_MM)] = 0.0
    minThicknessMm: Annotated[float, WithinRange(0, MAX_FINISH_MM)] = 0.0
    outputSegmentation: vtkMRMLSegmentationNode


class SkullVAEWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: loads the .ui, binds it to the parameter node, hands actions to SkullVAEPanel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._quitConnected = False
        self._onQuit = None

    def setup(self) -> None:
        from SkullVAESlicerLib.widget import SkullVAEPanel

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourceFile("UI/SkullVAE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SkullVAELogic()
        self.panel = SkullVAEPanel(self.ui, self.logic, lambda: self._parameterNode)
        self._connectQuit(True)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module cleanup (Slicer closing, the module reloaded): stop runs, kill the warm worker."""
        self._connectQuit(False)
        if self.panel is not None:
            self.panel.cancel()
        if self.logic is not None:
            self.logic.cleanup()
        self.removeObservers()

    def _connectQuit(self, connect: bool) -> None:
        """Kill the warm worker when Slicer quits (``slicer.app.aboutToQuit``), where there is one."""
        signal = getattr(getattr(slicer, "app", None), "aboutToQuit", None)
        if signal is None or self.logic is None or connect == self._quitConnected:
            return
        if connect:
            self._onQuit = self.logic.cleanup  # the same callable for connect and disconnect
        try:
            (signal.connect if connect else signal.disconnect)(self._onQuit)
            self._quitConnected = connect
        except (RuntimeError, TypeError, ValueError) as exc:  # no such signal here: cleanup() still runs
            logging.getLogger("SkullVAE").debug(f"aboutToQuit not (dis)connected: {exc}")

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self.panel is not None:
            self.panel.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        params = SkullVAEParameterNode(self.logic.getParameterNode())
        if not params.inputVolume and not params.inputSegmentation:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                params.inputVolume = first
        remembered = self.panel.rememberedModelPath()
        if not modelPathText(params) and remembered:
            params.modelPath = Path(remembered)
        self.setParameterNode(params)

    def setParameterNode(self, params) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = params
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self.panel.updateButtons()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.panel.updateButtons()


class SkullVAETest(ScriptedLoadableModuleTest):
    """Inside Slicer: the phantom sample completes without a model; with a tiny untrained model too.

    Registered as a Slicer Python unit test (SkullVAE/CMakeLists.txt: slicer_add_python_unittest).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomWithoutModel()
        self.setUp()
        self.test_PhantomWithTinyModel()

    def test_PhantomWithoutModel(self):
        from SkullVAESlicerLib import results, sampledata

        self.delayDisplay("Completing the phantom sample without a model (rim fit)")
        volume = slicer.util.loadVolume(str(sampledata.phantomPath()))
        logic = SkullVAELogic()
        seg = logic.process(volume, None, defect="cranial", forceCPU=True, timeout=600)
        worker = logic.workerPid
        again = logic.process(volume, None, defect="cranial", forceCPU=True, marginMm=3.0, timeout=600)
        self.assertEqual(logic.workerPid, worker)  # the second Apply reused the warm worker
        self.assertLess(logic.lastResult["implantVolumeMm3"], results.segmentVolumeMm3(seg, "Implant"))  # the gap
        slicer.mrmlScene.RemoveNode(again)
        segmentation = seg.GetSegmentation()
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Patient bone"))
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Implant"))
        self.assertEqual(segmentation.GetNumberOfLayers(), 1)  # the two do not overlap
        self.assertEqual(logic.lastResult["implantSource"], "rimfit")
        self.assertGreater(logic.lastResult["implantVolumeMm3"], 0)
        self.assertTrue(results.hasSurface(seg, "Implant"))
        with tempfile.TemporaryDirectory(prefix="SkullVAETest-") as folder:  # removed again, STL and all
            self.assertTrue(os.path.isfile(logic.exportImplantStl(seg, os.path.join(folder, "implant.stl"))))
        logic.cleanup()
        self.assertIsNone(logic.workerPid)
        self.delayDisplay("Test passed")

    def test_PhantomWithTinyModel(self):
        with tempfile.TemporaryDirectory(prefix="SkullVAETest-") as folder:  # the phantom and the model, removed again
            self._completeWithTinyModel(Path(folder))

    def _completeWithTinyModel(self, folder: Path) -> None:
        import numpy as np

        from SkullVAELib.bundle.model_bundle import new_bundle
        from SkullVAELib.core.config import network_preset
        from SkullVAELib.data.phantoms import make_phantom
        from SkullVAELib.io.image import write_mask

        self.delayDisplay("Making a phantom skull and a tiny model")
        phantomPath = folder / "phantom.nrrd"
        write_mask(make_phantom(0, shape=(48, 48, 40), spacing=(3.2, 3.2, 3.2)), phantomPath)
        bundle = new_bundle(network_preset("test"), aggregated=True, seed=0)
        d = bundle.network.latent_size
        bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1)})
        bundle.save(folder / "model")
        volume = slicer.util.loadVolume(str(phantomPath))

        self.delayDisplay("Completing with the model")
        logic = SkullVAELogic()
        seg = logic.process(
            volume, str(folder / "model"), defect="cranial", sources=["model"], forceCPU=True, timeout=600
        )
        self.assertTrue(seg.GetSegmentation().GetSegmentIdBySegmentName("Implant"))
        # an untrained model may find nothing to fill ("none"); when it makes the implant, γ did
        self.assertIn(logic.lastResult["implantSource"], ("model", "none"))
        self.assertEqual(logic.lastResult["gammaUsed"], logic.lastResult["implantSource"] == "model")
        with self.assertRaises(ValueError):
            logic.process(volume, str(folder / "no such model"))
        logic.cleanup()  # the worker ends before its model's folder goes
        self.delayDisplay("Test passed")
