"""SkullVAELogic: everything the module does without a GUI (console, batch, widget).

``process()`` writes the input with a storage node to a private temporary folder, sends one
``skullvae complete ... --progress json`` request to a warm ``skullvae worker`` child (``worker.py``:
kept alive between calls, so imports and models load once; killed by Cancel and :meth:`cleanup`),
and loads the resulting ``.seg.nrrd`` into a segmentation node the Slicer way (``results.py``:
"Patient bone" and "Implant", not overlapping, with terminology; the implant's surface at once) on
the input's geometry, under the input in the subject hierarchy. ``SkullVAELogic(warmWorker=False)``
starts one child per call instead (``batch.py``). A model is optional: without one, cranial defects
get the model-free rim fit. The implant sources and the finishing are the library's words
(``sources``, ``mirror``, ``selfCheck``, ``smoothMm``, ``marginMm``, ``minThicknessMm``), and so is how a volume's
values are read (``inputKind``: ``--input-kind`` auto, binary or ct). Imports no Qt: under the
slicer-core wheel the base class is a plain object. The model half (list, download, install,
remove) is ``models.ModelsLogic``.
"""

from __future__ import annotations

import logging
import shutil
import time

from SkullVAELib.core.config import IMPLANT_SOURCES  # the implant sources' words (torch-free)

from . import inputs, nodes, outputs, results
from .models import ModelsLogic
from .options import (  # noqa: F401  (re-exported: the panel's rules)
    DEFECT_TYPES,
    FINISHING,
    INPUT_KINDS,
    checkedChoices,
    checkedOptions,
    gammaApplies,
    mirrorApplies,
    selfCheckApplies,
)
from .process import (  # noqa: F401  (SkullVAECancelled, SkullVAETimeout: re-exported API)
    ChildProcess,
    RunOutcome,
    SkullVAECancelled,
    SkullVAETimeout,
    buildCompleteArguments,
    buildCompleteCommand,
    buildWorkerCommand,
    childEnvironment,
    makeRunFolder,
    removeStaleTempFolders,
)
from .results import SOURCE_TEXT, sourceText  # noqa: F401  (the panel's words; re-exported)
from .worker import WorkerHolder

try:  # inside Slicer
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core wheel (no Qt): same API, no base behaviour needed
    ScriptedLoadableModuleLogic = object


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

    def __init__(self, warmWorker: bool = True) -> None:
        """``warmWorker``: keep one ``skullvae worker`` child alive between calls (the panel, the
        console); False: one ``skullvae complete`` child per call (``batch.py``)."""
        if ScriptedLoadableModuleLogic is not object:
            ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None  # (str) -> None; default: logging.info
        self.lastResult: dict | None = None
        self.lastArguments: list[str] = []  # the `skullvae complete` arguments of the last run
        self.uncertaintyVolume = None
        self.settings = None  # accepted licences (ModelsLogic); the panel sets qt.QSettings
        self.warmWorker = bool(warmWorker)
        self.worker = WorkerHolder(log=self.log)
        self._run: _Run | None = None
        self._job = None  # a running models.ModelJob (download or install)

    # --- dependencies ------------------------------------------------------------
    def setupPythonRequirements(self, askConfirmation: bool = True) -> bool:
        """Install torch (PyTorch extension) and the other requirements, after asking. After an
        install the warm worker is replaced at the next run (it has the old packages imported)."""
        from .install import setupPythonRequirements

        installed = []

        def log(text: str) -> None:
            installed.append(text)  # the installer logs only what it installs
            self.log(text)

        try:
            return setupPythonRequirements(askConfirmation=askConfirmation, log=log)
        finally:
            if installed:
                self.worker.markStale()

    def _modelsChanged(self) -> None:
        """A model was installed or removed: the worker's loaded one may be gone or replaced."""
        self.worker.markStale()

    # --- the warm worker -----------------------------------------------------------
    @property
    def workerPid(self) -> int | None:
        """The process id of the live warm worker, else None (none started, or it ended)."""
        return self.worker.pid

    def stopWorker(self) -> None:
        """Kill the warm worker now (the next run starts a new one); a running completion is cancelled."""
        if self._run is not None:
            self._abort(self._run, SkullVAECancelled("Cancelled: the SkullVAE worker was stopped"))
        self.worker.stop()

    def cleanup(self) -> None:
        """Module cleanup or Slicer quitting: stop a running completion or model job, kill the worker."""
        if self.isDownloading:
            self.cancelDownload()
        self.stopWorker()

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
        sources=IMPLANT_SOURCES,
        mirror: bool = True,
        selfCheck: bool = False,
        smoothMm: float = 0.0,
        marginMm: float = 0.0,
        minThicknessMm: float = 0.0,
        inputKind: str = "auto",
        segmentIds=None,
        waitForCompletion: bool = True,
        onProgress=None,
        onFinished=None,
        timeout: float | None = None,
    ):
        """Complete the skull in ``inputNode`` (CT or binary volume, labelmap, or segmentation); returns the output
        segmentation node when ``waitForCompletion``, else None.

        Args:
            inputNode: vtkMRMLScalarVolumeNode (CT or binary mask), vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode.
            modelPath: a model bundle folder (holds config.json) or an installed model's name;
                None or "": no model (cranial defects: the model-free rim fit).
            outputSegmentation: node to fill; None, or a node holding another input's result, creates
                "<input> completion" (``outputs.outputFor``). It is placed under the input's parent transform.
            gamma: γ, weight of the class-direction shift (``SkullVAELib.core.config.GAMMA_RANGE``, 0..2).
            defect: "auto", "cranial" or "facial".
            boneThresholdHU: bone threshold for CT input (HU; for ``inputKind`` "ct", in the scan's own units).
            forceCPU: run on CPU even when CUDA is present.
            uncertainty: also load an uncertainty map as a volume.
            sources: the implant sources to try in order (``--sources``; the first that applies and proposes bone
                wins): "residual" (the rim fit corrected by the bundle's cranial U-Net), "rimfit" (no model), "learned"
                (facial U-Net), "atlas", "model" (latent arithmetic, γ). A sequence or one text "rimfit,model".
            mirror: let ``rimfit`` and ``residual`` use the skull's mirror image (``--mirror``/``--no-mirror``).
            selfCheck: score ``rimfit``'s fill on the hole's outline moved over the intact vault (``--self-check``;
                about 1.5 s more; the log and :attr:`lastResult`'s ``implant_self_check`` hold the DSC).
            smoothMm: smooth the implant's surface (Gaussian σ, mm; ``--smooth-mm``).
            marginMm: the gap left between implant and patient bone (mm; ``--margin-mm``).
            minThicknessMm: remove implant parts thinner than this (mm; ``--min-thickness-mm``).
                Finishing: 0 = off; the library refuses values above its maximum (a ValueError).
            inputKind: how a scalar volume's values are read (``--input-kind``, :data:`INPUT_KINDS`): "auto" (from the
                values), "binary" (nonzero = bone) or "ct" (>= ``boneThresholdHU``, e.g. a CBCT); labelmaps are binary.
            segmentIds: segmentation input: the skull's segment(s), ids or names; None: the only segment,
                else the visible ones (the log names those used; ``inputs.boneSegmentIds``). A volume input (a label
                map): its skull's label value(s) (``--segment``; None: the only one there is).
            waitForCompletion: block until done (console, batch); else return at once and call :meth:`poll`.
            onProgress: ``(stage, fraction, message)``; ``fraction`` is None for log lines.
            onFinished: ``(segmentationNode or None, error or None)`` when a started run ends; a run that
                fails to start (bad input, no worker) only raises.
            timeout: blocking mode: seconds until the child is stopped, :class:`SkullVAETimeout` (None: no limit).

        Raises:
            ValueError for bad input (a model folder that is not a bundle, empty segmentation, input neither
            binary nor CT), SkullVAECancelled, SkullVAETimeout, RuntimeError when the child fails; the scene
            is left as it was. :attr:`lastResult` and :attr:`uncertaintyVolume` are None until a run succeeds.
        """
        if self._run is not None:
            raise RuntimeError("a completion is already running; cancel it first")
        self.lastResult = self.uncertaintyVolume = None  # nothing of an earlier run stays after this one
        options = checkedOptions(inputNode, modelPath, gamma, defect, boneThresholdHU, forceCPU, uncertainty, inputKind)
        options["choices"] = checkedChoices(sources, mirror, selfCheck, smoothMm=smoothMm, marginMm=marginMm,
                                            minThicknessMm=minThicknessMm)  # fmt: skip
        inputs.checkLabelChoice(inputNode, _volumeLabels(inputNode, segmentIds))  # a skull and a brain: which?
        options["segmentIds"] = segmentIds  # a segmentation input's bone (inputs.boneSegmentIds)
        output = outputs.outputFor(inputNode, outputSegmentation, self.log)  # not another input's result
        self._run = run = _Run(inputNode, output, options, onProgress, onFinished)
        try:
            self._writeInput(run)
            self._start(run)
        except BaseException as exc:
            run.onFinished = None  # it never started: the exception alone reports it (not a second time)
            self._finish(run, None, exc)
            raise
        return self._waitFor(run, timeout) if waitForCompletion else None

    def _waitFor(self, run, timeout: float | None):
        """Block until ``run`` ends (``timeout`` seconds at most): its segmentation node, or raise its error."""
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
        if run.child is not None:
            run.child.kill()  # a warm worker is killed too: the next run starts a new one
        self._finish(run, None, error)

    def cancel(self) -> None:
        """Kill the running child (and its children); the run ends with SkullVAECancelled."""
        run = self._run
        if run is not None and run.child is not None:
            self.log("Cancelling...")
            run.child.kill()

    # --- steps -------------------------------------------------------------------
    def _writeInput(self, run: _Run) -> None:
        node = run.inputNode
        inputPath = run.tempDir / "input.nrrd"
        if nodes.isSegmentationNode(node):
            ids, run.options["geometry"] = inputs.writeSegmentationAsLabelmap(
                node, inputPath, run.options["segmentIds"]
            )
            self.log(f"Skull: the segment(s) {inputs.segmentNames(node, ids)} of '{node.GetName()}'")
        else:
            nodes.writeVolume(node, inputPath)
        run.options["inputPath"] = str(inputPath)

    def _start(self, run: _Run) -> None:
        opts = run.options
        options = dict(
            gamma=opts["gamma"],
            defect=opts["defect"],
            inputKind=opts["inputKind"],
            boneThresholdHU=opts["boneThresholdHU"],
            device="cpu" if opts["forceCPU"] else "auto",
            uncertaintyPath=str(run.tempDir / "uncertainty.nrrd") if opts["uncertainty"] else None,
            labels=_volumeLabels(run.inputNode, opts["segmentIds"]),
            **opts["choices"],
        )
        paths = (opts["inputPath"], opts["model"], str(run.tempDir / "result.seg.nrrd"))
        env = childEnvironment(forceCPU=opts["forceCPU"])
        where = ("CPU (forced)" if opts["forceCPU"] else "GPU if available, else CPU") + (
            "" if opts["model"] else ", no model"
        )
        if not self.warmWorker:
            args = buildCompleteCommand(*paths, **options)
            self.lastArguments = args[args.index("complete") + 1 :] if "complete" in args else list(args)
            self.log(f"Running on {where}: {' '.join(args)}")
            run.child = ChildProcess(args, env, cwd=str(run.tempDir))
            return
        self.lastArguments = buildCompleteArguments(*paths, **options)
        self.log(f"Running on {where}: skullvae complete {' '.join(self.lastArguments)}")
        run.child = self.worker.submit(buildWorkerCommand(), env, self.lastArguments)

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
        output, self.uncertaintyVolume = outputs.loadResult(
            run.inputNode, run.outputNode, run.tempDir, run.options["uncertainty"], run.options.get("geometry")
        )
        self.lastResult = results.resultSummary(outcome.result or {}, output, bool(run.options.get("model")))
        for line in results.summaryLines(self.lastResult, run.options["defect"]):
            self.log(line)
        return output

    def _finish(self, run: _Run, node, error) -> None:
        """Remove temporary nodes and files, forget the run (and a worker that ended), tell the caller."""
        shutil.rmtree(run.tempDir, ignore_errors=True)
        self._run = None
        self.worker.forgetIfDead()
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


def _volumeLabels(inputNode, segmentIds) -> tuple[str, ...]:
    """A volume input's chosen label values (``segmentIds`` of a label map: ``--segment`` each); a segmentation's
    segments are chosen here, before its bone is written (``inputs.boneSegmentIds``)."""
    if nodes.isSegmentationNode(inputNode) or segmentIds is None:
        return ()
    return (str(segmentIds),) if isinstance(segmentIds, (str, int)) else tuple(str(s) for s in segmentIds)
