"""Run `python -m SkullVAELib complete ...` as a child process and follow its progress.

No Qt here: a reader thread turns the child's output lines into events on a queue;
whoever owns the event loop drains it (the widget with a ``qt.QTimer``, console and
batch use by blocking in :meth:`ChildProcess.wait`). Cancel kills the whole process
tree (children first) with psutil.

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

ERROR_PREFIX = "error:"
TEMP_PREFIX = "SkullVAE-"  # temporary folders of runs: input copy, results
STALE_TEMP_AGE_S = 24 * 3600  # a run's folder older than this belongs to a killed Slicer
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


def buildCompleteCommand(
    inputPath: str,
    modelPath: str,
    outputPath: str,
    gamma: float = 1.0,
    defect: str = "auto",
    inputKind: str = "auto",
    boneThresholdHU: float = 300.0,
    device: str = "auto",
    implantStlPath: str | None = None,
    uncertaintyPath: str | None = None,
    python: str | None = None,
    refine: bool = True,
    symmetry: bool = True,
    atlas: bool = True,
    learnedRefiner: bool = True,
) -> list[str]:
    """The argument list of one ``skullvae complete`` run with JSON progress.

    ``atlas``: let the defects the rim fit cannot fill (facial ones) take the atlas implant of
    the bundle's ``atlas/`` set when it has one (False: ``--no-atlas``, the model's implant).
    ``learnedRefiner``: let facial defects take the bundle's learned facial refiner
    (``refiner.safetensors``) when it has one, before the atlas (False: ``--no-refiner``).
    """
    args = skullvaeCommand(["complete"], python)
    args += ["--model", str(modelPath), "--input", str(inputPath), "--output", str(outputPath)]
    args += ["--gamma", repr(float(gamma)), "--defect", defect, "--input-kind", inputKind]
    args += ["--hu-threshold", repr(float(boneThresholdHU)), "--device", device, "--progress", "json"]
    if implantStlPath:
        args += ["--implant-stl", str(implantStlPath)]
    if uncertaintyPath:
        args += ["--uncertainty", str(uncertaintyPath)]
    args += ["--refine" if refine else "--no-refine", "--symmetry" if symmetry else "--no-symmetry"]
    if not atlas:
        args.append("--no-atlas")
    if not learnedRefiner:
        args.append("--no-refiner")
    return args


def skullvaeCommand(verbArgs: list[str], python: str | None = None) -> list[str]:
    """``[python, -c, BOOTSTRAP, LIBRARY_ROOT, *verbArgs]``: ``skullvae VERB ...`` isolated from the
    current folder (see the module docstring); use with a private ``cwd``."""
    return [python or pythonExecutable(), "-c", BOOTSTRAP, libraryRoot(), *map(str, verbArgs)]


def removeStaleTempFolders(root: str | None = None, maxAge: float = STALE_TEMP_AGE_S) -> list[str]:
    """Remove our ``SkullVAE-*`` run folders older than ``maxAge`` seconds (left by a killed Slicer:
    they hold a copy of a patient volume). Only folders owned by this user are touched."""
    import tempfile

    root = root or tempfile.gettempdir()
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or now - info.st_mtime < maxAge:
                continue
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def childEnvironment(forceCPU: bool = False) -> dict[str, str]:
    """Variables added to the child's environment: our library on PYTHONPATH; no GPU when forced."""
    paths = [libraryRoot()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}
    if forceCPU:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


@dataclass
class ProgressEvent:
    """One line from the child: progress (``fraction`` not None), a log line, or the final result."""

    stage: str = ""
    fraction: float | None = None
    message: str = ""
    result: dict | None = None


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
            )
    return ProgressEvent(message=text)


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


class ChildProcess:
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
        self._finished = False
        self.proc = _launch(self.args, env or {}, cwd)
        self._reader = threading.Thread(target=self._read, name="SkullVAE-child-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        try:
            for line in iter(stream.readline, ""):
                self.events.put(parseLine(line))
        finally:
            stream.close()
            self.events.put(None)  # end of output

    @property
    def pid(self) -> int:
        return self.proc.pid

    def drain(self, onEvent=None) -> RunOutcome | None:
        """Handle every queued event without blocking; the outcome once the child has ended."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return None
            outcome = self._handle(event, onEvent)
            if outcome is not None:
                return outcome

    def wait(self, onEvent=None, timeout: float | None = None) -> RunOutcome:
        """Block until the child has ended, handling its events in this thread."""
        while True:
            event = self.events.get(timeout=timeout)
            outcome = self._handle(event, onEvent)
            if outcome is not None:
                return outcome

    def _handle(self, event: ProgressEvent | None, onEvent) -> RunOutcome | None:
        if event is None:
            self._finished = True
            returnCode = self.proc.wait()
            return RunOutcome(returnCode, self.result, self.logLines, self.cancelled)
        if event.result is not None:
            self.result = event.result
        if event.fraction is None and event.message:
            self.logLines.append(event.message)
        if onEvent is not None:
            onEvent(event)
        return None

    def kill(self) -> None:
        """Cancel: kill the child's descendants first, then the child (no orphan workers)."""
        import psutil

        self.cancelled = True
        try:
            parent = psutil.Process(self.proc.pid)
            children = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in children + [parent]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=10)
        self.proc.wait(timeout=10)  # reap through Popen so that it keeps the real exit status
