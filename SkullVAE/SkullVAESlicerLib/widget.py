"""The Qt side of the SkullVAE panel: buttons, progress, log, settings. No computation here.

The logic runs the child process; this class drains its output with a ``qt.QTimer`` on
the main thread (so the GUI never freezes), turns Apply into Cancel while it runs, and
shows the result.
"""

from __future__ import annotations

import logging
import os
import time

import qt
import slicer

from .logic import SkullVAECancelled

MODEL_PATH_SETTING = "SkullVAE/ModelPath"
POLL_INTERVAL_MS = 100


class SkullVAEPanel:
    """Connects the widgets of Resources/UI/SkullVAE.ui to a SkullVAELogic.

    Args:
        ui: the ``childWidgetVariables`` of the loaded .ui.
        logic: a SkullVAELogic.
        parameterNode: callable returning the current SkullVAEParameterNode (or None).
    """

    def __init__(self, ui, logic, parameterNode) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.logic.logCallback = self.appendLog
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3D)
        self.ui.exportStlButton.connect("clicked(bool)", self.onExportStl)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

    # --- settings ------------------------------------------------------------------
    @staticmethod
    def rememberedModelPath() -> str:
        return str(qt.QSettings().value(MODEL_PATH_SETTING, ""))

    def onModelPathChanged(self, path: str) -> None:
        if path and os.path.isfile(os.path.join(path, "config.json")):
            qt.QSettings().setValue(MODEL_PATH_SETTING, path)
        self.updateButtons()

    # --- state ---------------------------------------------------------------------
    def updateButtons(self) -> None:
        params = self.parameterNode()
        running = self.logic.isRunning
        hasInput = params is not None and (params.inputVolume is not None or params.inputSegmentation is not None)
        hasModel = params is not None and bool(modelPathText(params))
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or (hasInput and hasModel)
        self.ui.applyButton.toolTip = (
            "Stop the running completion"
            if running
            else "Complete the skull"
            if hasInput and hasModel
            else "Select an input and a model folder"
        )
        hasOutput = params is not None and params.outputSegmentation is not None
        self.ui.show3DButton.enabled = hasOutput and not running
        self.ui.exportStlButton.enabled = hasOutput and not running
        self.ui.boneThresholdSpinBox.enabled = (
            params is not None and params.inputSegmentation is None and not _isLabelmap(params.inputVolume)
        )

    def appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        logging.info(text)

    # --- actions -------------------------------------------------------------------
    def onInstallDependencies(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to install the Python dependencies.", waitCursor=True):
            self.logic.setupPythonRequirements(askConfirmation=True)
            self.appendLog("Dependencies are installed.")

    def onApplyOrCancel(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            return
        params = self.parameterNode()
        inputNode = params.inputSegmentation or params.inputVolume
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        try:
            self.logic.setupPythonRequirements(askConfirmation=True)
            self.logic.process(
                inputNode,
                modelPathText(params),
                outputSegmentation=params.outputSegmentation,
                gamma=params.gamma,
                defect=params.defectType,
                boneThresholdHU=params.boneThresholdHU,
                forceCPU=params.forceCPU,
                uncertainty=params.uncertainty,
                waitForCompletion=False,
                onProgress=self.onProgress,
                onFinished=self.onFinished,
            )
        except Exception as exc:
            slicer.util.errorDisplay(f"SkullVAE could not start: {exc}")
            self.updateButtons()
            return
        self.ui.statusLabel.text = "Running..."
        self.timer.start()
        self.updateButtons()

    def onTimer(self) -> None:
        if self.logic.poll():
            self.timer.stop()

    def onProgress(self, stage: str, fraction, message: str) -> None:
        if fraction is None:
            return
        self.ui.progressBar.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))
        self.ui.statusLabel.text = f"{stage}: {message}" if message else stage

    def onFinished(self, node, error) -> None:
        self.timer.stop()
        if isinstance(error, SkullVAECancelled):
            self.ui.statusLabel.text = "Cancelled."
            self.ui.progressBar.setValue(0)
        elif error is not None:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), windowTitle="SkullVAE")
        else:
            self.ui.statusLabel.text = "Done."
            self.ui.progressBar.setValue(100)
            params = self.parameterNode()
            if params is not None:
                params.outputSegmentation = node
        self.updateButtons()

    def onShow3D(self) -> None:
        node = self.parameterNode().outputSegmentation
        node.CreateClosedSurfaceRepresentation()
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetVisibility3D(True)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount == 0:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        slicer.util.resetThreeDViews()

    def onExportStl(self) -> None:
        node = self.parameterNode().outputSegmentation
        default = os.path.join(qt.QDir.homePath(), f"{node.GetName()} implant.stl")
        path = qt.QFileDialog.getSaveFileName(None, "Export implant as STL", default, "STL files (*.stl)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Failed to export the implant.", waitCursor=True):
            written = self.logic.exportImplantStl(node, path)
            self.appendLog(f"Implant written to {written}")

    def cancel(self) -> None:
        """Stop a running child (module cleanup, scene close)."""
        if self.logic.isRunning:
            self.logic.cancel()
            deadline = time.monotonic() + 10
            while not self.logic.poll() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.timer.stop()


def modelPathText(params) -> str:
    """The chosen model folder as text; "" when none (an unset pathlib.Path reads as ".")."""
    text = str(params.modelPath or "") if params is not None else ""
    return "" if text in ("", ".") else text


def _isLabelmap(node) -> bool:
    return node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")
