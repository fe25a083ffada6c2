"""SkullVAELogic: everything the module does without a GUI (console, batch, widget).

``process()`` writes the input with a storage node to a private temporary folder, runs
``python -m SkullVAELib complete ... --progress json`` in a child process, and loads the
resulting ``.seg.nrrd`` into a segmentation node the Slicer way (``results.py``: "Patient
bone" and "Implant", not overlapping, with terminology; the implant's surface at once) on
the input's geometry, under the input in the subject hierarchy. A model is optional: without
one, cranial defects get the model-free rim fit. Imports no Qt: under the slicer-core wheel
the base class is a plain object. The model half (list, download, install, remove) is
``models.ModelsLogic``.
"""

from __future__ import annotations

import logging
import shutil
import time

from SkullVAELib.core.config import DEFECT_CHOICES, check_gamma  # the vocabulary and γ rule (torch-free)
from SkullVAELib.core.errors import SkullVAEError

from . import nodes, results
from .models import ModelsLogic, resolveModelPath
from .process import (  # noqa: F401  (SkullVAECancelled, SkullVAETimeout: re-exported API)
    ChildProcess,
    RunOutcome,
    SkullVAECancelled,
    SkullVAETimeout,
    buildCompleteCommand,
    childEnvironment,
    makeRunFolder,
    removeStaleTempFolders,
)
from .results import SOURCE_TEXT, sourceText  # noqa: F401  (the panel's words; re-exported)

try:  # inside Slicer
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core wheel (no Qt): same API, no base behaviour needed
    ScriptedLoadableModuleLogic = object

DEFECT_TYPES = DEFECT_CHOICES  # the library's vocabulary (config.py owns it)


def gammaApplies(modelPath, defect: str = "auto", refine: bool = True) -> bool:
    """Whether γ can change the implant of a run with these settings (the panel enables γ by it).

    γ weights the model's latent arithmetic: without a model it does nothing, and a cranial
    defect with the rim fit on takes the rim fit's implant. Other settings may use the model.
    """
    if modelPath is None or not str(modelPath).strip() or str(modelPath).strip() == ".":
        return False
    return not (defect == "cranial" and refine)


class _Run:
    """State of one process() call: temp folder, child, callbacks; finished exactly once."""

    def __init__(self, inputNode, outputNode, options: dict, onProgress, onFinished) -> None:
        self.inputNode = inputNode
        self.outputNode = outputNode
        self.options = options
        self.onProgress = onProgress
        self.onFinished = onFinished
        removeStaleTempFolders()  # our own run folders left by a killed Slicer (older than a day)
        self.tempDir = makeRunFolder()
        self.child: ChildProcess | None = None


class SkullVAELogic(ModelsLogic, ScriptedLoadableModuleLogic):
    """Skull completion from the Python console, batch scripts and the module panel.

    Example (Slicer Python console)::

        logic = SkullVAELogic()
        seg = logic.process(getNode("defective"))  # cranial: the rim fit, no model needed
        seg = logic.process(getNode("defective"), "/path/to/model", gamma=1.0)
    """

    def __init__(self) -> None:
        if ScriptedLoadableModuleLogic is not object:
            ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None  # (str) -> None; default: logging.info
        self.lastResult: dict | None = None
        self.uncertaintyVolume = None
        self.settings = None  # accepted licences (ModelsLogic); the panel sets qt.QSettings
        self._run: _Run | None = None
        self._job = None  # a running models.ModelJob (download or install)

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
        modelPath=None,
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
        timeout: float | None = None,
    ):
        """Complete the skull in ``inputNode`` (CT or binary volume, labelmap, or segmentation).

        Args:
            inputNode: vtkMRMLScalarVolumeNode (CT in HU or binary mask), vtkMRMLLabelMapVolumeNode
                or vtkMRMLSegmentationNode.
            modelPath: a model bundle folder (holds config.json) or an installed model's name;
                None or "": no model (cranial defects: the model-free rim fit).
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
            timeout: blocking mode only: seconds after which the child is stopped and
                :class:`SkullVAETimeout` raised (None: no limit; Ctrl-C also stops it).

        Returns:
            The output segmentation node when ``waitForCompletion``, else None.

        Raises:
            ValueError for bad input (a model folder that is not a bundle, empty segmentation,
            input neither binary nor CT), SkullVAECancelled, SkullVAETimeout, RuntimeError when
            the child fails.
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
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        try:
            done = False
            while not done:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    outcome = run.child.wait(lambda event: self._onEvent(run, event), timeout=remaining)
                except TimeoutError:
                    raise SkullVAETimeout(
                        f"the completion did not finish within {timeout:g} s and was stopped"
                    ) from None
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
        model = None
        if modelPath is not None and str(modelPath).strip() not in ("", "."):
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
            "model": str(model) if model is not None else None,
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
        where = "CPU (forced)" if opts["forceCPU"] else "GPU if available, else CPU"
        self.log(f"Running on {where}{'' if opts['model'] else ', no model (rim fit)'}: {' '.join(args)}")
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
        nodes.onlyLabelmapOnLoad(run.tempDir / "result.seg.nrrd")  # our temporary: surfaces built by us, lazily
        segmentation = nodes.loadSegmentationFile(scene, run.tempDir / "result.seg.nrrd")
        output, created = run.outputNode, run.outputNode is None
        if created:
            output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{run.inputNode.GetName()} completion")
        try:
            results.fillResultSegmentation(output, segmentation, run.inputNode)
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
        self.lastResult = self._summary(outcome.result or {}, output, run)
        timings = self.lastResult.get("timings") or {}
        if timings:
            self.log(
                "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if isinstance(v, (int, float)))
            )
        if not self.lastResult["implantVoxels"]:
            self.log("Note: the implant is empty (no defect was found to fill).")
        self.log(
            f"Completion done: {self.lastResult.get('defect', run.options['defect'])} defect; implant "
            f"{self.lastResult['implantVolumeMm3'] / 1000:.1f} cm³ from {sourceText(self.lastResult['implantSource'])}"
        )
        return output

    @staticmethod
    def _summary(result: dict, output, run: _Run) -> dict:
        """The child's result JSON plus what the panel shows, measured on the loaded segments.

        ``implantSource``: the result's "implant_source" (rimfit, learned, atlas, model); a result
        without it (an older library) came from the model when there was one. ``gammaUsed``: the
        result's "gamma_used", else whether the model's arithmetic made the implant.
        """
        source = result.get("implant_source") or ("model" if run.options.get("model") else "rimfit")
        summary = dict(result)
        summary["implantSource"] = source
        summary["gammaUsed"] = bool(result.get("gamma_used", source == "model"))
        summary["implantVoxels"] = results.segmentVoxelCount(output, results.IMPLANT)
        summary["implantVolumeMm3"] = results.segmentVolumeMm3(output, results.IMPLANT)
        return summary

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
        return nodes.exportSegmentStl(segmentationNode, results.IMPLANT, path)

    @staticmethod
    def addCompletedSkull(segmentationNode) -> str:
        """Add the "Completed skull" segment (patient bone ∪ implant; it overlaps both) on request."""
        return results.addCompletedSkull(segmentationNode)

    @staticmethod
    def showIn3D(segmentationNode, show: bool = True) -> None:
        """Slicer's Show 3D: build the surfaces still missing (the patient bone's) and show them."""
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.GetDisplayNode().SetVisibility3D(bool(show))
