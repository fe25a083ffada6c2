"""SkullVAELogic: everything the module does without a GUI (console, batch, widget).

``process()`` writes the input with a storage node to a temporary folder, runs
``python -m SkullVAELib complete ... --progress json`` in a child process, and loads the
resulting ``.seg.nrrd`` into a segmentation node ("Completed skull", "Implant") on the
input's geometry, under the input in the subject hierarchy, with closed surfaces.
Imports no Qt: under the slicer-core wheel the base class is a plain object.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from SkullVAELib.core.config import DEFECT_CHOICES, check_gamma  # the vocabulary and γ rule (torch-free)
from SkullVAELib.core.errors import SkullVAEError

from . import nodes
from .process import (
    TEMP_PREFIX,
    ChildProcess,
    RunOutcome,
    buildCompleteCommand,
    childEnvironment,
    removeStaleTempFolders,
)

try:  # inside Slicer
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core wheel (no Qt): same API, no base behaviour needed
    ScriptedLoadableModuleLogic = object

DEFECT_TYPES = DEFECT_CHOICES  # the library's vocabulary (config.py owns it)


class SkullVAECancelled(RuntimeError):
    """The user cancelled the run."""


class _Run:
    """State of one process() call: temp folder, child, callbacks; finished exactly once."""

    def __init__(self, inputNode, outputNode, options: dict, onProgress, onFinished) -> None:
        self.inputNode = inputNode
        self.outputNode = outputNode
        self.options = options
        self.onProgress = onProgress
        self.onFinished = onFinished
        removeStaleTempFolders()  # patient copies left by a killed Slicer (older than a day)
        self.tempDir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        self.child: ChildProcess | None = None


class SkullVAELogic(ScriptedLoadableModuleLogic):
    """Skull completion from the Python console, batch scripts and the module panel.

    Example (Slicer Python console)::

        logic = SkullVAELogic()
        seg = logic.process(getNode("defective"), "/path/to/model", gamma=1.0)
    """

    def __init__(self) -> None:
        if ScriptedLoadableModuleLogic is not object:
            ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None  # (str) -> None; default: logging.info
        self.lastResult: dict | None = None
        self.uncertaintyVolume = None
        self._run: _Run | None = None
        self._download = None  # a running models.ModelDownload

    # --- pretrained models (SkullVAESlicerLib/models.py) ---------------------------
    @staticmethod
    def listModels() -> list:
        """Installed models and registry entries: ``ModelChoice(name, installed, path, downloadable, status)``."""
        from .models import listModels

        return listModels()

    @staticmethod
    def modelPath(nameOrPath) -> str:
        """The folder of an installed model name (or a folder as given); ValueError otherwise."""
        from .models import resolveModelPath

        return str(resolveModelPath(nameOrPath))

    @property
    def isDownloading(self) -> bool:
        return self._download is not None and not self._download.done

    def downloadModel(
        self,
        name: str,
        waitForCompletion: bool = True,
        onProgress=None,
        onFinished=None,
        overwrite: bool = False,
        force: bool | None = None,
    ):
        """Download, verify and install the registry model ``name`` (child process; resumable).

        Returns the installed folder when ``waitForCompletion``; else None, and
        :meth:`pollDownload` must be called from a timer. ``onFinished(path, error)``.
        ``overwrite`` downloads and installs again even if the model is installed
        (``force`` is its deprecated old name).
        Raises ValueError (not in the registry, not released, network error naming the URL),
        SkullVAECancelled after :meth:`cancelDownload`, RuntimeError otherwise.
        """
        from .models import ModelDownload

        if force is not None:
            warnings.warn("downloadModel(force=...) is deprecated; use overwrite=...", DeprecationWarning, stacklevel=2)
            overwrite = overwrite or bool(force)
        if self.isDownloading:
            raise RuntimeError("a model download is already running; cancel it first")
        self.log(f"Downloading model {name}...")
        self._download = ModelDownload(name, onProgress=onProgress, onFinished=onFinished, overwrite=overwrite)
        if not waitForCompletion:
            return None
        path = self._download.wait()
        self.log(f"Model {name} installed in {path}")
        return str(path)

    def pollDownload(self) -> bool:
        """Handle the download's pending output; True once it has ended (or none runs)."""
        return self._download is None or self._download.poll()

    def cancelDownload(self) -> None:
        if self.isDownloading:
            self.log("Cancelling the download...")
            self._download.cancel()

    # --- dependencies ------------------------------------------------------------
    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Install torch (PyTorch extension) and the other requirements, after asking."""
        from .install import setupPythonRequirements

        return setupPythonRequirements(askConfirmation=askConfirmation, log=self.log)

    # --- the run -----------------------------------------------------------------
    def log(self, text: str) -> None:
        (self.logCallback or logging.info)(text)

    @property
    def isRunning(self) -> bool:
        return self._run is not None

    def process(
        self,
        inputNode,
        modelPath,
        outputSegmentation=None,
        gamma: float = 1.0,
        defect: str = "auto",
        boneThresholdHU: float = 300.0,
        forceCPU: bool = False,
        uncertainty: bool = False,
        refine: bool = True,
        symmetry: bool = True,
        atlas: bool = True,
        learnedRefiner: bool = True,
        waitForCompletion: bool = True,
        onProgress=None,
        onFinished=None,
    ):
        """Complete the skull in ``inputNode`` (CT or binary volume, labelmap, or segmentation).

        Args:
            inputNode: vtkMRMLScalarVolumeNode (CT in HU or binary mask), vtkMRMLLabelMapVolumeNode
                or vtkMRMLSegmentationNode.
            modelPath: a model bundle folder (holds config.json).
            outputSegmentation: node to fill; None creates "<input> completion".
            gamma: γ, weight of the class-direction shift (``SkullVAELib.core.config.GAMMA_RANGE``, 0..2).
            defect: "auto", "cranial" or "facial".
            boneThresholdHU: bone threshold for CT input.
            forceCPU: run on CPU even when CUDA is present.
            uncertainty: also load an uncertainty map as a volume.
            refine: cranial defects: fit the implant to the defect's rim at full resolution
                (``skullvae complete --refine``); False keeps the model's implant (the paper's).
            symmetry: let that fit use the skull's mirror image (``--symmetry``).
            atlas: facial defects (no rim to fit): the atlas implant of the bundle's ``atlas/``
                set when it has one (``skullvae build-atlas``); False: ``--no-atlas``.
            learnedRefiner: facial defects: the bundle's learned facial refiner
                (``refiner.safetensors``, ``skullvae train-refiner``) when it has one, before the
                atlas; False: ``--no-refiner``.
            waitForCompletion: block until done (console, batch); else return at once
                and call :meth:`poll` from a timer.
            onProgress: ``(stage, fraction, message)``; ``fraction`` is None for log lines.
            onFinished: ``(segmentationNode or None, error or None)`` when done.

        Returns:
            The output segmentation node when ``waitForCompletion``, else None.

        Raises:
            ValueError for bad input (no model, not a bundle, empty segmentation,
            input neither binary nor CT), SkullVAECancelled, RuntimeError when the child fails.
            The scene is left as it was.
        """
        if self._run is not None:
            raise RuntimeError("a completion is already running; cancel it first")
        options = self._checkedOptions(inputNode, modelPath, gamma, defect, boneThresholdHU, forceCPU, uncertainty)
        switches = dict(refine=refine, symmetry=symmetry, atlas=atlas, learnedRefiner=learnedRefiner)
        options["switches"] = {name: bool(on) for name, on in switches.items()}  # buildCompleteCommand's
        run = _Run(inputNode, outputSegmentation, options, onProgress, onFinished)
        self._run = run
        try:
            self._writeInput(run)
            self._start(run)
        except BaseException as exc:
            self._finish(run, None, exc)
            raise
        if not waitForCompletion:
            return None
        try:
            done = False
            while not done:
                outcome = run.child.wait(lambda event: self._onEvent(run, event))
                done, node, error = self._afterChild(run, outcome)
        except BaseException as exc:  # e.g. onProgress raised: no child or temp folder may stay
            self._abort(run, exc)
            raise
        if error is not None:
            raise error
        return node

    def poll(self) -> bool:
        """Handle the child's pending output without blocking; True once the run has ended."""
        run = self._run
        if run is None:
            return True
        try:
            outcome = run.child.drain(lambda event: self._onEvent(run, event))
            if outcome is None:
                return False
            done, _node, _error = self._afterChild(run, outcome)
        except BaseException as exc:  # e.g. onProgress raised: no child or temp folder may stay
            self._abort(run, exc)
            raise
        return done

    def _abort(self, run: _Run, error: BaseException) -> None:
        """End ``run`` after an unexpected exception: kill its child, remove its files, once."""
        if self._run is not run:
            return  # already finished
        if run.child is not None and run.child.proc.poll() is None:
            run.child.kill()
        self._finish(run, None, error)

    def cancel(self) -> None:
        """Kill the running child (and its children); the run ends with SkullVAECancelled."""
        run = self._run
        if run is not None and run.child is not None:
            self.log("Cancelling...")
            run.child.kill()

    # --- steps -------------------------------------------------------------------
    @staticmethod
    def _checkedOptions(inputNode, modelPath, gamma, defect, boneThresholdHU, forceCPU, uncertainty) -> dict:
        if inputNode is None:
            raise ValueError("No input selected: choose a CT volume, a labelmap or a skull segmentation")
        if not (nodes.isScalarVolumeNode(inputNode) or nodes.isSegmentationNode(inputNode)):
            raise ValueError(f"'{inputNode.GetName()}' is neither a volume nor a segmentation")
        if not modelPath or not str(modelPath).strip():
            raise ValueError("No model chosen: select a SkullVAE model folder (it holds config.json)")
        from .models import resolveModelPath

        model = resolveModelPath(modelPath)  # a folder, or the name of an installed model
        if not model.is_dir():
            raise ValueError(f"{model}: model folder not found")
        if not (model / "config.json").is_file():
            raise ValueError(f"{model}: not a SkullVAE model bundle (no config.json in this folder)")
        try:
            check_gamma(gamma)  # the library's rule (config.GAMMA_RANGE)
        except SkullVAEError as exc:
            raise ValueError(str(exc)) from None
        if defect not in DEFECT_TYPES:
            raise ValueError(f"defect type must be one of {', '.join(DEFECT_TYPES)}, got {defect!r}")
        return {
            "model": str(model),
            "gamma": float(gamma),
            "defect": defect,
            "boneThresholdHU": float(boneThresholdHU),
            "forceCPU": bool(forceCPU),
            "uncertainty": bool(uncertainty),
        }

    def _writeInput(self, run: _Run) -> None:
        node = run.inputNode
        inputPath = run.tempDir / "input.nrrd"
        if nodes.isSegmentationNode(node):
            nodes.writeSegmentationAsLabelmap(node, inputPath)
            run.options["inputKind"] = "binary"
        else:
            nodes.writeVolume(node, inputPath)
            run.options["inputKind"] = "binary" if nodes.isLabelmapNode(node) else "auto"
        run.options["inputPath"] = str(inputPath)

    def _start(self, run: _Run) -> None:
        opts = run.options
        device = "cpu" if opts["forceCPU"] else "auto"
        args = buildCompleteCommand(
            opts["inputPath"],
            opts["model"],
            str(run.tempDir / "result.seg.nrrd"),
            gamma=opts["gamma"],
            defect=opts["defect"],
            inputKind=opts["inputKind"],
            boneThresholdHU=opts["boneThresholdHU"],
            device=device,
            uncertaintyPath=str(run.tempDir / "uncertainty.nrrd") if opts["uncertainty"] else None,
            **opts.get("switches", {}),
        )
        self.log(f"Running on {'CPU (forced)' if opts['forceCPU'] else 'GPU if available, else CPU'}: {' '.join(args)}")
        run.child = ChildProcess(args, childEnvironment(forceCPU=opts["forceCPU"]), cwd=str(run.tempDir))

    def _onEvent(self, run: _Run, event) -> None:
        if event.fraction is None and event.result is None:
            self.log(event.message)
        elif event.message and event.fraction is not None:
            logging.debug(f"{event.stage} {event.fraction:.2f} {event.message}")
        if run.onProgress is not None:
            run.onProgress(event.stage, event.fraction, event.message)

    def _afterChild(self, run: _Run, outcome: RunOutcome):
        """Decide what a finished child means: load the result, or fail.

        CUDA out of memory is handled inside the child (``completion.complete`` falls back to the CPU).
        """
        node, error = None, None
        if outcome.cancelled:
            error = SkullVAECancelled("Cancelled: the completion was stopped by the user")
        elif outcome.returnCode == 2:
            error = ValueError(self._userMessage(run, outcome.errorMessage))
        elif outcome.returnCode != 0:
            message = self._userMessage(run, outcome.errorMessage)
            error = RuntimeError(f"SkullVAE completion failed (exit code {outcome.returnCode}): {message}")
        else:
            try:
                node = self._loadResult(run, outcome)
            except BaseException as exc:
                error = exc
        self._finish(run, node, error)
        return True, node, error

    @staticmethod
    def _userMessage(run: _Run, message: str) -> str:
        """The child's error line without its prefix, naming the input node instead of the temp file."""
        message = message.split(": error: ", 1)[-1].strip()
        return message.replace(run.options.get("inputPath", "\0"), f"'{run.inputNode.GetName()}'")

    def _loadResult(self, run: _Run, outcome: RunOutcome):
        scene = run.inputNode.GetScene()
        segmentation = nodes.loadSegmentationFile(scene, run.tempDir / "result.seg.nrrd")
        output, created = run.outputNode, run.outputNode is None
        if created:
            output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{run.inputNode.GetName()} completion")
        try:
            nodes.fillResultSegmentation(output, segmentation, run.inputNode)
            nodes.placeUnder(output, run.inputNode)
            if run.options["uncertainty"]:
                self.uncertaintyVolume = nodes.readVolume(
                    scene, run.tempDir / "uncertainty.nrrd", f"{run.inputNode.GetName()} uncertainty"
                )
                nodes.placeUnder(self.uncertaintyVolume, run.inputNode)
        except BaseException:
            if created:
                nodes.removeNodes([output])
            raise
        self.lastResult = outcome.result or {}
        if nodes.segmentIsEmpty(output, nodes.IMPLANT):
            self.log("Note: the implant is empty (the model found nothing missing at this gamma).")
        timings = self.lastResult.get("timings") or {}
        if timings:
            self.log(
                "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if isinstance(v, int | float))
            )
        self.log(
            f"Completion done: {self.lastResult.get('defect', run.options['defect'])} defect, "
            f"implant from {self.lastResult.get('implant_source', 'the model')}"
        )
        return output

    def _finish(self, run: _Run, node, error) -> None:
        """Remove temporary nodes and files, forget the run, tell the caller."""
        shutil.rmtree(run.tempDir, ignore_errors=True)
        self._run = None
        if error is not None and not isinstance(error, SkullVAECancelled):
            self.log(f"Error: {error}")
        if run.onFinished is not None:
            run.onFinished(node, error)

    # --- results -----------------------------------------------------------------
    @staticmethod
    def exportImplantStl(segmentationNode, path) -> str:
        """Write the "Implant" segment's surface as an STL file (LPS)."""
        return nodes.exportSegmentStl(segmentationNode, nodes.IMPLANT, path)
