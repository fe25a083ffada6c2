"""The Qt side of the SkullVAE panel: buttons, progress, log, settings. No computation here.

The logic runs the child process; this class drains its output with a ``qt.QTimer`` on
the main thread (so the GUI never freezes), turns Apply into Cancel while it runs, and
shows the result: which source made the implant, its volume, Slicer's Show 3D toggle (the
implant's surface exists at once; the bone's is built right after the panel is updated).
The model selector lists installed models and the registry's; Download (after the licence is accepted, once per
model, remembered in the user's settings) and Install from file run ``skullvae models download|install`` the same
way (progress bar, Cancel); Remove deletes. A model is optional: Apply needs only an input. γ is enabled only
where it can change the implant (``logic.gammaApplies``). The implant sources are one checkbox per source, named
by the library's word (residual, rimfit, learned, atlas, model; ``options.sourcesOf``), the mirror and self-check
two more, and the finishing (smoothing, gap, minimum thickness) goes to ``process(smoothMm=, marginMm=, ...)``.
The input kind (auto, binary, ct: ``--input-kind``) goes to ``process(inputKind=)``. Which settings are enabled
is decided by ``options`` (gammaApplies, mirrorApplies, selfCheckApplies, inputKindApplies, boneThresholdApplies).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import qt
import slicer

from . import options
from .logic import SkullVAECancelled, gammaApplies, sourceText
from .options import modelPathText, sourcesOf
from .results import volumeText

MODEL_PATH_SETTING = "SkullVAE/ModelPath"
POLL_INTERVAL_MS = 100
MODEL_ARCHIVES = "Model archives (*.zip *.tar *.tar.gz *.tgz);;All files (*)"


class SettingsStore:
    """``qt.QSettings`` as the mapping ``ModelsLogic.settings`` expects (get / item assignment)."""

    def get(self, key, default=None):
        value = qt.QSettings().value(key)
        return default if value is None else str(value)

    def __setitem__(self, key, value) -> None:
        qt.QSettings().setValue(key, value)


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
        self.modelChoices: list = []  # ModelChoice of each selector line after the placeholder
        self.logic.logCallback = self.appendLog
        self.logic.settings = SettingsStore()  # accepted licences, per model, for this user
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyOrCancel)
        self.ui.exportStlButton.connect("clicked(bool)", self.onExportStl)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.downloadTimer = qt.QTimer()
        self.downloadTimer.setInterval(POLL_INTERVAL_MS)
        self.downloadTimer.connect("timeout()", self.onDownloadTimer)
        self.ui.modelSelectorComboBox.connect("activated(int)", self.onModelSelected)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadOrCancel)
        self.ui.removeModelButton.connect("clicked(bool)", self.onRemoveModel)
        self.ui.installModelFileButton.connect("clicked(bool)", self.onInstallModelFile)
        self.ui.completedSkullButton.connect("clicked(bool)", self.onAddCompletedSkull)
        self.ui.show3DButton.setMRMLScene(slicer.mrmlScene)
        self.refreshModels()

    # --- settings ------------------------------------------------------------------
    @staticmethod
    def rememberedModelPath() -> str:
        return str(qt.QSettings().value(MODEL_PATH_SETTING, ""))

    def onModelPathChanged(self, path: str) -> None:
        if path and os.path.isfile(os.path.join(path, "config.json")):
            qt.QSettings().setValue(MODEL_PATH_SETTING, path)
        self.selectChoiceFor(path)
        self.updateButtons()

    # --- model selector and download -------------------------------------------------
    def refreshModels(self) -> None:
        """Fill the selector: a placeholder, installed models, then registry entries."""
        try:
            self.modelChoices = list(self.logic.listModels())
        except Exception as exc:  # a broken registry must not break the panel
            self.modelChoices = []
            self.appendLog(f"Model list unavailable: {exc}")
        combo = self.ui.modelSelectorComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("(a model folder below)" if self.modelChoices else "(no models: choose a folder below)")
        for choice in self.modelChoices:
            combo.addItem(choice.label)
        combo.blockSignals(False)
        params = self.parameterNode()
        self.selectChoiceFor(modelPathText(params) if params is not None else "")
        self.updateButtons()

    def selectChoiceFor(self, path: str) -> None:
        """Show the installed model whose folder is ``path`` (else the placeholder)."""
        index = next(
            (i + 1 for i, c in enumerate(self.modelChoices) if c.installed and path and _samePath(c.path, path)), 0
        )
        self.ui.modelSelectorComboBox.setCurrentIndex(index)

    def selectedChoice(self):
        index = self.ui.modelSelectorComboBox.currentIndex - 1
        return self.modelChoices[index] if 0 <= index < len(self.modelChoices) else None

    def onModelSelected(self, index: int) -> None:
        choice = self.selectedChoice()
        params = self.parameterNode()
        if choice is not None and choice.installed and params is not None:
            params.modelPath = Path(choice.path)
        elif choice is not None and not choice.installed:
            self.ui.statusLabel.text = (
                f"{choice.name}: click Download to install it"
                if choice.downloadable
                else f"{choice.name}: {choice.status}"
            )
        self.updateButtons()

    def onDownloadOrCancel(self) -> None:
        if self.logic.isDownloading:
            self.logic.cancelDownload()
            return
        choice = self.selectedChoice()
        if choice is None or not choice.downloadable or not self.licenceAccepted(choice.name):
            return
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = f"Downloading {choice.name}..."
        try:
            self.logic.downloadModel(
                choice.name, waitForCompletion=False, onProgress=self.onProgress, onFinished=self.onDownloadFinished
            )
        except Exception as exc:
            slicer.util.errorDisplay(f"SkullVAE could not start the download: {exc}")
            self.updateButtons()
            return
        self.downloadTimer.start()
        self.updateButtons()

    def licenceAccepted(self, name: str) -> bool:
        """Ask once per model (remembered in the user's settings) before downloading licensed weights."""
        licence = self.logic.licenceToAccept(name)
        if licence is None:
            return True
        text = (
            f"The weights of {name} are under this licence:\n\n{licence}\n\n"
            "Do you accept it? (You are asked once per model.)"
        )
        if not slicer.util.confirmYesNoDisplay(text, windowTitle="SkullVAE: model licence"):
            self.ui.statusLabel.text = f"{name}: licence not accepted; nothing was downloaded."
            return False
        self.logic.acceptLicence(name)
        return True

    def onRemoveModel(self) -> None:
        choice = self.selectedChoice()
        if choice is None or not choice.installed:
            return
        if not slicer.util.confirmOkCancelDisplay(f"Delete the installed model {choice.name} ({choice.path})?"):
            return
        with slicer.util.tryWithErrorDisplay("Failed to remove the model.", waitCursor=True):
            self.logic.removeModel(choice.name)
            params = self.parameterNode()
            if params is not None and _samePath(modelPathText(params), choice.path):
                params.modelPath = Path(".")
        self.refreshModels()

    def onInstallModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            None, "Install a SkullVAE model archive", qt.QDir.homePath(), MODEL_ARCHIVES
        )
        if not path:
            return
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = f"Installing {os.path.basename(path)}..."
        try:
            self.logic.installModel(
                path, waitForCompletion=False, onProgress=self.onProgress, onFinished=self.onDownloadFinished
            )
        except Exception as exc:
            slicer.util.errorDisplay(f"SkullVAE could not install {path}: {exc}")
            self.updateButtons()
            return
        self.downloadTimer.start()
        self.updateButtons()

    def onDownloadTimer(self) -> None:
        if self.logic.pollDownload():
            self.downloadTimer.stop()

    def onDownloadFinished(self, path, error) -> None:
        self.downloadTimer.stop()
        if isinstance(error, SkullVAECancelled):
            self.ui.statusLabel.text = "Cancelled (a download resumes next time)."
            self.ui.progressBar.setValue(0)
        elif error is not None:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), windowTitle="SkullVAE")
        else:
            self.ui.statusLabel.text = f"Model installed: {path}"
            self.ui.progressBar.setValue(100)
            params = self.parameterNode()
            if params is not None:
                params.modelPath = Path(path)
        self.refreshModels()

    # --- state ---------------------------------------------------------------------
    def updateButtons(self) -> None:
        params = self.parameterNode()
        running, downloading = self.logic.isRunning, self.logic.isDownloading
        hasInput = params is not None and (params.inputVolume is not None or params.inputSegmentation is not None)
        choice = self.selectedChoice()
        self.ui.downloadModelButton.text = "Cancel" if downloading else "Download"
        self.ui.downloadModelButton.enabled = downloading or (
            choice is not None and choice.downloadable and not running
        )
        self.ui.removeModelButton.enabled = choice is not None and choice.installed and not (running or downloading)
        self.ui.installModelFileButton.enabled = not (running or downloading)
        self.ui.modelSelectorComboBox.enabled = not (running or downloading)
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or (hasInput and not downloading)
        self.ui.applyButton.toolTip = (
            "Stop the running completion"
            if running
            else "Complete the skull (without a model: the rim fit, for cranial defects)"
            if hasInput
            else "Select an input"
        )
        sources = sourcesOf(params)
        if not sources and not running:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = "Choose at least one implant source"
        useGamma = params is not None and gammaApplies(modelPathText(params), params.defectType, sources)
        self.ui.gammaSlider.enabled = useGamma and not running
        self.ui.gammaSlider.toolTip = (
            "γ: how strongly the model completes (1 = the paper)"
            if useGamma
            else "γ has no effect here: it weights the model source only (no model, the model source off, or a "
            "cranial defect that rimfit fills first)"
        )
        defect, model = (params.defectType if params is not None else "auto"), modelPathText(params)
        self.ui.mirrorCheckBox.enabled = options.mirrorApplies(model, defect, sources) and not running
        self.ui.selfCheckCheckBox.enabled = options.selfCheckApplies(defect, sources) and not running
        output = params.outputSegmentation if params is not None else None
        self.ui.show3DButton.setSegmentationNode(output)
        self.ui.show3DButton.enabled = output is not None and not running
        self.ui.exportStlButton.enabled = output is not None and not running
        self.ui.completedSkullButton.enabled = output is not None and not running
        volume, segmentation, kind = (
            (params.inputVolume, params.inputSegmentation, params.inputKind) if params is not None else (None, None, "")
        )
        self.ui.inputKindComboBox.enabled = options.inputKindApplies(volume, segmentation)
        self.ui.boneThresholdSpinBox.enabled = options.boneThresholdApplies(volume, segmentation, kind)

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
        self.ui.implantSourceLabel.text = self.ui.implantVolumeLabel.text = ""
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
                sources=sourcesOf(params),
                inputKind=params.inputKind,
                mirror=params.mirror,
                selfCheck=params.selfCheck,
                smoothMm=params.smoothMm,
                marginMm=params.marginMm,
                minThicknessMm=params.minThicknessMm,
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
            self.showSummary(self.logic.lastResult or {})
            params = self.parameterNode()
            if params is not None:
                params.outputSegmentation = node
            # the implant is in 3D already; the patient bone's surface (a whole skull) after the panel updated
            qt.QTimer.singleShot(0, lambda: self.logic.showIn3D(node) if node.GetScene() is not None else None)
        self.updateButtons()

    def showSummary(self, result: dict) -> None:
        """Which source made the implant, whether γ did, the implant's volume and its quality score."""
        gamma = "γ was used" if result.get("gammaUsed") else "γ had no effect"
        made = sourceText(result.get("implantSource"), result.get("implant_variant"))
        self.ui.implantSourceLabel.text = f"Implant made by {made}; {gamma}."
        self.ui.implantVolumeLabel.text = volumeText(result)

    def onAddCompletedSkull(self) -> None:
        node = self.parameterNode().outputSegmentation
        with slicer.util.tryWithErrorDisplay("Failed to add the completed skull.", waitCursor=True):
            self.logic.addCompletedSkull(node)
            self.appendLog("Added the 'Completed skull' segment (patient bone and implant together).")

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
        if self.logic.isDownloading:
            self.logic.cancelDownload()
            deadline = time.monotonic() + 10
            while not self.logic.pollDownload() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.downloadTimer.stop()
        if self.logic.isRunning:
            self.logic.cancel()
            deadline = time.monotonic() + 10
            while not self.logic.poll() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.timer.stop()


def _samePath(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
