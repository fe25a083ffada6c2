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
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ERROR_PREFIX = "error:"
TEMP_PREFIX = "SkullVAE-"  # temporary folders of runs: input copy, results
#: A file inside every run folder this module makes: only folders holding it are ever removed as stale.
RUN_MARKER = ".skullvae-slicer-run"
STALE_TEMP_AGE_S = 24 * 3600  # a run's folder older than this belongs to a killed Slicer


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


def buildCompleteCommand(
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
    python: str | None = None,
    refine: bool = True,
    symmetry: bool = True,
    atlas: bool = True,
    learnedRefiner: bool = True,
) -> list[str]:
    """The argument list of one ``skullvae complete`` run with JSON progress.

    ``modelPath`` None or "": no ``--model`` (the model-free rim fit of cranial defects).
    ``refine`` / ``learnedRefiner`` / ``atlas``: keep the ``rimfit`` / ``learned`` / ``atlas`` implant
    source in ``--sources`` (the ``model`` source is always last); ``symmetry``: ``--mirror``.
    """
    args = skullvaeCommand(["complete"], python)
    if modelPath is not None and str(modelPath).strip():
        args += ["--model", str(modelPath)]
    args += ["--input", str(inputPath), "--output", str(outputPath)]
    args += ["--gamma", repr(float(gamma)), "--defect", defect, "--input-kind", inputKind]
    args += ["--hu-threshold", repr(float(boneThresholdHU)), "--device", device, "--progress", "json"]
    if implantStlPath:
        args += ["--implant-stl", str(implantStlPath)]
    if uncertaintyPath:
        args += ["--uncertainty", str(uncertaintyPath)]
    args += ["--sources", ",".join(implantSources(refine, learnedRefiner, atlas))]
    args.append("--mirror" if symmetry else "--no-mirror")
    return args


def implantSources(rimfit: bool = True, learned: bool = True, atlas: bool = True, model: bool = True) -> list[str]:
    """The implant sources of ``skullvae complete --sources``, in the library's order
    (``SkullVAELib.core.config.IMPLANT_SOURCES``), with the switched-off ones left out."""
    from SkullVAELib.core.config import IMPLANT_SOURCES

    wanted = {"rimfit": rimfit, "learned": learned, "atlas": atlas, "model": model}
    return [name for name in IMPLANT_SOURCES if wanted[name]]


def skullvaeCommand(verbArgs: list[str], python: str | None = None) -> list[str]:
    """``[python, -c, BOOTSTRAP, LIBRARY_ROOT, *verbArgs]``: ``skullvae VERB ...`` isolated from the
    current folder (see the module docstring); use with a private ``cwd``."""
    return [python or pythonExecutable(), "-c", BOOTSTRAP, libraryRoot(), *map(str, verbArgs)]


def makeRunFolder(root: str | None = None) -> Path:
    """A new private ``SkullVAE-XXXXXXXX`` folder (``tempfile.mkdtemp``: mode 0700, unpredictable
    name) holding :data:`RUN_MARKER`, which marks it as this module's own for
    :func:`removeStaleTempFolders`."""
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
    try:
        fd = os.open(folder / RUN_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as marker:
            marker.write(f"SkullVAE Slicer run folder of process {os.getpid()}\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def isOwnRunFolder(entry: os.DirEntry) -> bool:
    """True for a real folder (no link) of this user that holds our :data:`RUN_MARKER` as a regular file."""
    try:
        if not entry.name.startswith(TEMP_PREFIX) or not entry.is_dir(follow_symlinks=False):
            return False
        if hasattr(os, "getuid") and entry.stat(follow_symlinks=False).st_uid != os.getuid():
            return False
        marker = os.lstat(os.path.join(entry.path, RUN_MARKER))
    except OSError:
        return False
    return stat.S_ISREG(marker.st_mode)


def removeStaleTempFolders(root: str | None = None, maxAge: float = STALE_TEMP_AGE_S) -> list[str]:
    """Remove our run folders older than ``maxAge`` seconds (left by a killed Slicer: they hold a
    copy of a patient volume). Only folders this module made (:func:`makeRunFolder`: they hold
    :data:`RUN_MARKER`) and that belong to this user are touched; any other ``SkullVAE-*``
    folder stays, whatever its age."""
    root = root or tempfile.gettempdir()
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not isOwnRunFolder(entry) or now - entry.stat(follow_symlinks=False).st_mtime < maxAge:
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


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
        self._psutil = requirePsutil()  # before the child exists: Cancel must be able to work
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
        """Block until the child has ended, handling its events in this thread.

        ``timeout``: seconds for the whole wait (None: no limit); past it ``TimeoutError`` is
        raised and the child keeps running (the caller decides: :meth:`kill`, or wait again).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, float(timeout))
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"the child process {self.proc.pid} did not end within {timeout:g} s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue  # the deadline check above raises
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
        psutil = self._psutil
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
