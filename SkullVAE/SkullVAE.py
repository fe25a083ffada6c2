"""SkullVAE: skull shape completion and implant design in 3D Slicer (scripted module).

The module, its typed parameter node, a thin widget and the self-test live here; the
logic (no Qt, testable under the slicer-core wheel) is ``SkullVAESlicerLib.logic`` and is
re-exported as ``SkullVAELogic``. Inference runs in a separate process
(``PythonSlicer -m SkullVAELib complete``), so Slicer never freezes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import slicer
import vtk
from SkullVAESlicerLib import resourcePath
from SkullVAESlicerLib.logic import SkullVAECancelled, SkullVAELogic  # noqa: F401  (re-exported API)
from SkullVAESlicerLib.widget import modelPathText
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SkullVAELib.core.config import DEFECT_CHOICES, GAMMA_RANGE


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
Completes a defective skull and designs the implant that fills the defect, with an aggregated
β-VAE (latent arithmetic: the defective skull's latent code is moved along the class direction
from "defective" to "complete" by γ and decoded).<br>
Input: a CT volume (bone found with a HU threshold), a binary skull mask or labelmap, or a skull
segmentation. Choose a model folder, the defect type (auto, cranial or facial) and γ (1 = paper),
then Apply. The output segmentation holds "Completed skull" and "Implant".<br>
<b>For research use only. Not a certified medical device; do not use for diagnosis or treatment.</b>
Implants must be checked and adapted by a qualified person before any use.
"""
        self.parent.acknowledgementText = """
Implements the method of "Training β-VAE by Aggregating a Learned Gaussian Posterior with a
Decoupled Decoder" (skull reconstruction and shape completion). Uses MONAI, PyTorch and 3D Slicer.
The SkullFix data set is from the AutoImplant challenge.
"""
        self.parent.icon = _icon()


def _icon():
    import qt

    return qt.QIcon(resourceFile("Icons/SkullVAE.png"))


@parameterNodeWrapper
class SkullVAEParameterNode:
    """Typed settings of the panel (saved with the scene).

    inputVolume: CT (HU) or binary volume / labelmap.
    inputSegmentation: a skull segmentation; used instead of inputVolume when set.
    boneThresholdHU: bone threshold for CT input.
    modelPath: model bundle folder.
    defectType: auto / cranial / facial (``SkullVAELib.core.config.DEFECT_CHOICES``).
    gamma: γ in ``SkullVAELib.core.config.GAMMA_RANGE`` (0..2; 1 = paper).
    forceCPU: run on CPU even with a GPU.
    uncertainty: also produce an uncertainty map.
    refineImplant: cranial defects: fit the implant to the defect's rim (``skullvae complete --refine``).
    outputSegmentation: receives "Completed skull" and "Implant".
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    boneThresholdHU: Annotated[float, WithinRange(-1000, 3000)] = 300
    modelPath: Path  # a ctkPathLineEdit binds to pathlib.Path only; Path(".") means "not chosen"
    defectType: Annotated[str, Choice(list(DEFECT_CHOICES))] = "auto"
    gamma: Annotated[float, WithinRange(*GAMMA_RANGE)] = 1.0
    forceCPU: bool = False
    uncertainty: bool = False
    refineImplant: bool = True
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

    def setup(self) -> None:
        from SkullVAESlicerLib.widget import SkullVAEPanel

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourceFile("UI/SkullVAE.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SkullVAELogic()
        self.panel = SkullVAEPanel(self.ui, self.logic, lambda: self._parameterNode)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cancel()
        self.removeObservers()

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
    """End to end inside Slicer: a phantom skull, a tiny untrained model, one completion."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomEndToEnd()

    def test_PhantomEndToEnd(self):
        import numpy as np

        from SkullVAELib.bundle.model_bundle import new_bundle
        from SkullVAELib.core.config import network_preset
        from SkullVAELib.data.phantoms import make_phantom
        from SkullVAELib.io.image import write_mask

        self.delayDisplay("Making a phantom skull and a tiny model")
        folder = Path(tempfile.mkdtemp(prefix="SkullVAETest-"))
        phantomPath = folder / "phantom.nrrd"
        write_mask(make_phantom(0, shape=(48, 48, 40), spacing=(3.2, 3.2, 3.2)), phantomPath)
        bundle = new_bundle(network_preset("test"), aggregated=True, seed=0)
        d = bundle.network.latent_size
        bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1)})
        bundle.save(folder / "model")
        volume = slicer.util.loadVolume(str(phantomPath))

        self.delayDisplay("Completing")
        logic = SkullVAELogic()
        seg = logic.process(volume, str(folder / "model"), defect="cranial", forceCPU=True)
        segmentation = seg.GetSegmentation()
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Completed skull"))
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("Implant"))
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))
        stl = logic.exportImplantStl(seg, str(folder / "implant.stl"))
        self.assertTrue(os.path.isfile(stl))
        with self.assertRaises(ValueError):
            logic.process(volume, "")
        self.delayDisplay("Test passed")
