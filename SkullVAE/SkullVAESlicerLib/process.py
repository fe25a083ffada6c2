"""Run ``skullvae complete ...`` (or ``models ...``) as a child process and follow its progress.

No Qt here: a reader thread turns the child's output lines into events on a queue;
whoever owns the event loop drains it (the widget with a ``qt.QTimer``, console and
batch use by blocking in :meth:`EventFollower.wait`). Cancel kills the whole process
tree (children first) with psutil. The warm ``skullvae worker`` that the GUI and the
console use is ``worker.py``; one-shot children (``batch.py``, model jobs) are :class:`ChildProcess`.

The child is isolated from the folder it is started in: it runs from a private temporary
folder (``cwd``) through a bootstrap (``-c``) that removes the current folder from
``sys.path`` and puts our library first, so a ``SkullVAELib/``, ``json.py`` or ``random.py``
planted in Slicer's working folder is never imported (``-I`` would also drop the
``PYTHONPATH`` that PythonSlicer needs; ``-P`` needs Python 3.11).

Output protocol of the child (``--progress json``, stderr merged into stdout):
``{"stage", "fraction", "message"}`` per line, finally ``{"stage": "done", ..., "result": {...}}``;
on a user error exit code 2 and one line ``skullvae complete: error: ...``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.config import IMPLANT_SOURCES  # the implant sources' words (torch-free)

from .runfolders import (  # noqa: F401  (re-exported: the run folders are part of this API)
    RUN_MARKER,
    STALE_TEMP_AGE_S,
    TEMP_PREFIX,
    isOwnRunFolder,
    makeRunFolder,
    removeStaleTempFolders,
)

ERROR_PREFIX = "error:"


class SkullVAECancelled(RuntimeError):
    """The user cancelled the run (a completion or a model download)."""


class SkullVAETimeout(RuntimeError):
    """A blocking call ran past its ``timeout``; its child process was stopped."""


# Runs `SkullVAELib.cli.main(argv)` with the library root (argv[1]) first on sys.path and the
# current folder ('' or '.') removed, before anything else is imported.
BOOTSTRAP = (
    "import sys; root = sys.argv.pop(1); "
    "sys.path[:] = [root] + [p for p in sys.path if p not in ('', '.', root)]; "
    "from SkullVAELib.cli import main; sys.exit(main(sys.argv[1:]))"
)


def pythonExecutable() -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` launcher when present, else ours."""
    app = _slicerApp()
    if app is not None:
        for folder in (app.applicationDirPath(), app.slicerHome + "/bin"):
            for name in ("PythonSlicer", "PythonSlicer.exe"):
                candidate = Path(folder) / name
                if candidate.is_file():
                    return str(candidate)
    return shutil.which("PythonSlicer") or sys.executable


def _slicerApp():
    try:
        import slicer

        return getattr(slicer, "app", None)
    except ImportError:
        return None


def libraryRoot() -> str:
    """The folder that holds the ``SkullVAELib`` package (put on the child's PYTHONPATH)."""
    import SkullVAELib

    return str(Path(SkullVAELib.__file__).resolve().parent.parent)


def buildCompleteArguments(
    inputPath: str,
    modelPath: str | None,
    outputPath: str,
    gamma: float = 1.0,
    defect: str = "auto",
    inputKind: str = "auto",
    boneThresholdHU: float = 300.0,
    device: str = "auto",
    implantStlPath: str | None = None,
    uncertaintyPath: str | None = None,
    sources=IMPLANT_SOURCES,
    mirror: bool = True,
    selfCheck: bool = False,
    smoothMm: float = 0.0,
    marginMm: float = 0.0,
    minThicknessMm: float = 0.0,
    labels=(),
) -> list[str]:
    """The arguments of one ``skullvae complete`` run with JSON progress, without the verb: one
    request line of ``skullvae worker``; :func:`buildCompleteCommand` puts them after the verb.

    ``modelPath`` None or "": no ``--model`` (the model-free rim fit of cranial defects).
    ``sources``: the implant sources in the order to try, in the library's words
    (``--sources``; :func:`sourceList`); ``mirror``: ``--mirror``/``--no-mirror`` of ``rimfit``;
    ``selfCheck``: ``--self-check`` (the rim fit tried on the skull's intact vault).
    ``smoothMm``, ``marginMm``, ``minThicknessMm``: ``--smooth-mm``, ``--margin-mm`` (the gap
    between implant and patient bone), ``--min-thickness-mm``; 0 = off, all in mm. ``labels``: a label
    map's skull labels (``--segment`` each; none: the only one).
    """
    args = []
    if modelPath is not None and str(modelPath).strip():
        args += ["--model", str(modelPath)]
    args += ["--input", str(inputPath), "--output", str(outputPath)]
    args += ["--gamma", repr(float(gamma)), "--defect", defect, "--input-kind", inputKind]
    args += ["--hu-threshold", repr(float(boneThresholdHU)), "--device", device, "--progress", "json"]
    if implantStlPath:
        args += ["--implant-stl", str(implantStlPath)]
    if uncertaintyPath:
        args += ["--uncertainty", str(uncertaintyPath)]
    args += ["--sources", ",".join(sourceList(sources)), "--mirror" if mirror else "--no-mirror"]
    if selfCheck:
        args += ["--self-check"]
    for flag, value in (("--smooth-mm", smoothMm), ("--margin-mm", marginMm), ("--min-thickness-mm", minThicknessMm)):
        args += [flag, repr(float(value))]
    for label in labels:
        args += ["--segment", str(label)]
    return args


def buildCompleteCommand(inputPath: str, modelPath: str | None, outputPath: str, python: str | None = None,
                         **options) -> list[str]:  # fmt: skip
    """The whole command of one one-shot ``skullvae complete`` child (``batch.py``); ``options``:
    those of :func:`buildCompleteArguments`."""
    return skullvaeCommand(["complete", *buildCompleteArguments(inputPath, modelPath, outputPath, **options)], python)


def buildWorkerCommand(python: str | None = None) -> list[str]:
    """The command of a ``skullvae worker`` child (complete requests on stdin, models kept loaded)."""
    return skullvaeCommand(["worker"], python)


def sourceList(sources) -> tuple[str, ...]:
    """The implant sources as the library's words, in the given order: a sequence of words or one
    comma-separated text ("rimfit,atlas"). Raises ValueError for an unknown or repeated word or
    an empty list, naming the known words (``SkullVAELib.core.config.IMPLANT_SOURCES``)."""
    words = [w.strip() for w in sources.split(",")] if isinstance(sources, str) else [str(w).strip() for w in sources]
    words = [w for w in words if w]
    bad = [w for w in words if w not in IMPLANT_SOURCES]
    if bad or not words or len(set(words)) != len(words):
        problem = f"unknown {', '.join(map(repr, bad))}" if bad else "none given" if not words else "a word repeated"
        raise ValueError(f"implant sources: {problem}; choose from {','.join(IMPLANT_SOURCES)} (in the order to try)")
    return tuple(words)


def skullvaeCommand(verbArgs: list[str], python: str | None = None) -> list[str]:
    """``[python, -c, BOOTSTRAP, LIBRARY_ROOT, *verbArgs]``: ``skullvae VERB ...`` isolated from the
    current folder (see the module docstring); use with a private ``cwd``."""
    return [python or pythonExecutable(), "-c", BOOTSTRAP, libraryRoot(), *map(str, verbArgs)]


def requirePsutil():
    """``psutil`` (needed to cancel: it kills the child's process tree), imported before a child starts.

    Raises RuntimeError naming the fix, so a missing psutil is found at Apply, not at Cancel.
    """
    try:
        import psutil
    except ImportError:
        raise RuntimeError(
            "the Python package psutil is missing (SkullVAE needs it to stop a running computation): "
            "click 'Install dependencies' in the SkullVAE module"
        ) from None
    return psutil


def childEnvironment(forceCPU: bool = False) -> dict[str, str]:
    """Variables added to the child's environment: our library on PYTHONPATH; no GPU when forced."""
    paths = [libraryRoot()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}
    if forceCPU:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


@dataclass
class ProgressEvent:
    """One line from the child: progress (``fraction`` not None), a log line, the final result, or
    (a worker) the end of a request (``stage`` "exit", ``code`` its exit code)."""

    stage: str = ""
    fraction: float | None = None
    message: str = ""
    result: dict | None = None
    code: int | None = None  # ``skullvae worker``'s end of one request: {"stage": "exit", "code": N}


def parseLine(line: str) -> ProgressEvent:
    """Turn one output line into an event; anything that is not a progress record is a log line."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and "stage" in record:
            fraction = record.get("fraction")
            return ProgressEvent(
                stage=str(record["stage"]),
                fraction=None if fraction is None else float(fraction),
                message=str(record.get("message", "")),
                result=record.get("result") if record.get("stage") == "done" else None,
                code=_exitCode(record),
            )
    return ProgressEvent(message=text)


def _exitCode(record: dict) -> int | None:
    code = record.get("code")
    return code if record.get("stage") == "exit" and isinstance(code, int) else None


@dataclass
class RunOutcome:
    """What a finished child left: exit code, final result record, its non-progress lines."""

    returnCode: int
    result: dict | None = None
    logLines: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def errorMessage(self) -> str:
        """The child's one-line error (the last line naming an error), else its last log line."""
        for line in reversed(self.logLines):
            if ERROR_PREFIX in line or "Error" in line:
                return line.strip()
        return self.logLines[-1].strip() if self.logLines else f"exit code {self.returnCode}"


def readLines(stream, events: queue.Queue) -> None:
    """Reader thread: every output line of ``stream`` becomes a :class:`ProgressEvent` on ``events``;
    None once the output has ended (the child ended or closed it)."""
    try:
        for line in iter(stream.readline, ""):
            events.put(parseLine(line))
    except (OSError, ValueError):  # the pipe was closed under us (a killed worker)
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass
        events.put(None)  # end of output


def _launch(args: list[str], env: dict[str, str], cwd: str | None = None) -> subprocess.Popen:
    """Start the child (in ``cwd``) with stdout+stderr merged into one text pipe.

    Inside Slicer ``slicer.util.launchConsoleProcess`` starts it from Slicer's startup
    environment (hidden console on Windows); under the slicer-core wheel the same
    function runs with our environment (there is no ``slicer.app``).
    """
    try:
        import slicer.util

        launch = getattr(slicer.util, "launchConsoleProcess", None)
    except ImportError:
        launch = None
    if launch is not None:
        return launch(args, useStartupEnvironment=_slicerApp() is not None, updateEnvironment=env, cwd=cwd)
    full_env = {**os.environ, **env}
    return subprocess.Popen(args, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class EventFollower:
    """Drain or wait on a queue of :class:`ProgressEvent` (None = the output ended) until the run ends.

    Subclasses set ``events``, ``logLines``, ``result``, ``cancelled`` and say in :meth:`_ended` which
    event ends the run (:class:`ChildProcess`: the end of the output; a worker request: its "exit" line).
    """

    events: queue.Queue
    logLines: list[str]
    result: dict | None = None
    cancelled: bool = False

    def _ended(self, event: ProgressEvent | None) -> RunOutcome | None:
        raise NotImplementedError

    def drain(self, onEvent=None) -> RunOutcome | None:
        """Handle every queued event without blocking; the outcome once the run has ended."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return None
            outcome = self._handle(event, onEvent)
            if outcome is not None:
                return outcome

    def wait(self, onEvent=None, timeout: float | None = None) -> RunOutcome:
        """Block until the run has ended, handling its events in this thread.

        ``timeout``: seconds for the whole wait (None: no limit); past it ``TimeoutError`` is
        raised and the child keeps running (the caller decides: :meth:`kill`, or wait again).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"the child process {self.pid} did not end within {timeout:g} s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue  # the deadline check above raises
            outcome = self._handle(event, onEvent)
            if outcome is not None:
                return outcome

    def _handle(self, event: ProgressEvent | None, onEvent) -> RunOutcome | None:
        outcome = self._ended(event)
        if outcome is not None or event is None:
            return outcome
        if event.result is not None:
            self.result = event.result
        if event.fraction is None and event.message:
            self.logLines.append(event.message)
        if onEvent is not None:
            onEvent(event)
        return None


class ChildProcess(EventFollower):
    """A running child: output lines become :class:`ProgressEvent` on ``events`` (a queue).

    Usage: ``child = ChildProcess(args, env); child.drain(callback)`` from a timer, or
    ``outcome = child.wait(callback)`` to block; ``child.kill()`` cancels.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.args = list(args)
        self.events: queue.Queue[ProgressEvent | None] = queue.Queue()
        self.logLines: list[str] = []
        self.result: dict | None = None
        self.cancelled = False
        self._psutil = requirePsutil()  # before the child exists: Cancel must be able to work
        self.proc = _launch(self.args, env or {}, cwd)
        self._reader = threading.Thread(
            target=readLines, args=(self.proc.stdout, self.events), name="SkullVAE-child-reader", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ended(self, event: ProgressEvent | None) -> RunOutcome | None:
        if event is not None:
            return None
        return RunOutcome(self.proc.wait(), self.result, self.logLines, self.cancelled)

    def kill(self) -> None:
        """Cancel: kill the child's descendants first, then the child (no orphan workers)."""
        self.cancelled = True
        killProcessTree(self._psutil, self.proc)


def killProcessTree(psutil, proc: subprocess.Popen) -> None:
    """Kill ``proc``'s descendants first, then ``proc``, and reap it through Popen (which keeps the real
    exit status). Nothing is killed once ``proc`` was reaped: its pid may belong to another process."""
    if proc.poll() is not None:
        return
    try:
        parent = psutil.Process(proc.pid)
        children = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        children, parent = [], None
    for member in children + ([parent] if parent is not None else []):
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
