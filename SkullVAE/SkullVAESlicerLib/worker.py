"""A warm ``skullvae worker`` child kept alive between Applies: imports and models are paid once.

Protocol (``SkullVAELib/cli/worker.py``): one request per stdin line, a JSON list of ``skullvae
complete`` arguments (:func:`process.buildCompleteArguments`); the worker prints that verb's JSON
progress lines (stderr merged into stdout; an error is one line) and then ``{"stage": "exit",
"code": N}``. Its last Completer stays loaded, so a second Apply with the same settings skips the
imports and the model load.

The worker starts like the one-shot child (:func:`process.skullvaeCommand`: the isolating bootstrap,
from a private empty folder of its own, :func:`runfolders.makeRunFolder`). It ends when it is
killed (Cancel, a run that is aborted, :meth:`WorkerHolder.stop` on module cleanup or when the
Python, the device or the installed packages and models change), when its stdin closes (Slicer
ended without cleanup), or when it dies; a dead worker is found before the next request and
replaced, once. No Qt, no slicer: runs under the slicer-core wheel.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import weakref

from .process import EventFollower, ProgressEvent, RunOutcome, killProcessTree, readLines, requirePsutil
from .runfolders import makeRunFolder

#: Exit code reported for a request whose worker ended without saying how the request ended.
WORKER_ENDED = 1


class WorkerGone(RuntimeError):
    """The worker could not take a request: it had ended."""


def _launchWorker(args: list[str], env: dict[str, str], cwd: str) -> subprocess.Popen:
    """Start the worker with pipes for stdin and stdout (+stderr), as ``process._launch`` starts a child:
    inside Slicer from Slicer's startup environment with a hidden console on Windows
    (``slicer.util.launchConsoleProcess`` gives no stdin pipe, so this is its Popen call with one)."""
    base = dict(os.environ)
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            import slicer.util

            base = slicer.util.startupEnvironment()
    except ImportError:
        pass
    options = {}
    if os.name == "nt":
        info = subprocess.STARTUPINFO()
        info.dwFlags = subprocess.STARTF_USESHOWWINDOW
        info.wShowWindow = 0  # hidden
        options["startupinfo"] = info
    return subprocess.Popen(
        args,
        env={**base, **env},
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        **options,
    )


def _endWorker(psutil, proc: subprocess.Popen, home: str) -> None:
    """Kill the worker's process tree, close its pipes, remove its folder (a finalizer: runs once)."""
    killProcessTree(psutil, proc)
    for stream in (proc.stdin,):
        try:
            stream.close()
        except (OSError, ValueError):
            pass
    shutil.rmtree(home, ignore_errors=True)


class Worker:
    """One running ``skullvae worker`` process.

    Args:
        command: its command line (:func:`process.buildWorkerCommand`).
        env: variables added to its environment (:func:`process.childEnvironment`).
    """

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = list(command)
        self.env = {**env, "PYTHONIOENCODING": "utf-8"}
        self.key = Worker.keyOf(command, env)
        self.requests = 0
        self.events: queue.Queue[ProgressEvent | None] = queue.Queue()
        psutil = requirePsutil()  # before the worker exists: Cancel must be able to work
        self.home = makeRunFolder()  # its private, empty working folder
        try:
            self.proc = _launchWorker(self.command, self.env, str(self.home))
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        self._end = weakref.finalize(self, _endWorker, psutil, self.proc, str(self.home))  # also at exit
        self._reader = threading.Thread(
            target=readLines, args=(self.proc.stdout, self.events), name="SkullVAE-worker-reader", daemon=True
        )
        self._reader.start()

    @staticmethod
    def keyOf(command: list[str], env: dict[str, str]) -> tuple:
        """What a worker is started with; another key needs another worker (e.g. the Python changed)."""
        return tuple(command), tuple(sorted(env.items()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Running, not ended by :meth:`kill`, and its folder still there (no one removed it as stale)."""
        return self._end.alive and self.proc.poll() is None and self.home.is_dir()

    def submit(self, args: list[str]) -> WorkerJob:
        """Send one request (``skullvae complete`` arguments without the verb); its :class:`WorkerJob`.

        Raises WorkerGone when the worker has ended or its stdin is closed.
        """
        if not self.alive:
            raise WorkerGone(f"the SkullVAE worker (pid {self.pid}) has ended (exit code {self.proc.poll()})")
        while True:  # anything it printed while idle belongs to no request
            try:
                if self.events.get_nowait() is None:
                    raise WorkerGone(f"the SkullVAE worker (pid {self.pid}) closed its output")
            except queue.Empty:
                break
        os.utime(self.home)  # in use: not a stale folder of a killed Slicer
        try:
            self.proc.stdin.write(json.dumps([str(a) for a in args]) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # BrokenPipeError; ValueError: stdin closed
            raise WorkerGone(f"the SkullVAE worker (pid {self.pid}) takes no more requests: {exc}") from None
        self.requests += 1
        return WorkerJob(self)

    def kill(self) -> None:
        """End the worker now (its process tree), close its pipes and remove its folder; idempotent."""
        self._end()


class WorkerJob(EventFollower):
    """One request to a :class:`Worker`, followed like a :class:`process.ChildProcess` (``drain``,
    ``wait``, ``kill``, ``pid``, ``logLines``, ``result``, ``cancelled``). It ends at the worker's
    "exit" line, or when the worker's output ends (it died, or :meth:`kill` killed it)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.events = worker.events
        self.logLines: list[str] = []
        self.result: dict | None = None
        self.cancelled = False

    @property
    def pid(self) -> int:
        return self.worker.pid

    def _ended(self, event: ProgressEvent | None) -> RunOutcome | None:
        if event is None:  # the worker's output ended during the request
            try:
                code = self.worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                code = self.worker.proc.poll()
            if not self.cancelled:
                self.logLines.append(f"the SkullVAE worker process ended unexpectedly (exit code {code})")
            return RunOutcome(code or WORKER_ENDED, self.result, self.logLines, self.cancelled)
        if event.stage == "exit" and event.code is not None:
            return RunOutcome(event.code, self.result, self.logLines, self.cancelled)
        return None

    def kill(self) -> None:
        """Cancel: the worker is killed (its process tree); the next request starts a new one."""
        self.cancelled = True
        self.worker.kill()


class WorkerHolder:
    """At most one warm :class:`Worker` of a logic: started on the first request, reused while its
    command and environment stay the same, replaced when they change, when it was marked stale
    (:meth:`markStale`: new packages or models), or when it has died (found before a request; a
    request the worker cannot take is sent once more to a new one).

    Args:
        log: ``(text) -> None`` for what the user should know (a worker started, restarted).
    """

    def __init__(self, log=None) -> None:
        self.log = log or (lambda text: None)
        self.worker: Worker | None = None
        self.stale = False

    @property
    def pid(self) -> int | None:
        """The pid of the live worker, else None."""
        return self.worker.pid if self.worker is not None and self.worker.alive else None

    def submit(self, command: list[str], env: dict[str, str], args: list[str]) -> WorkerJob:
        """Send ``args`` to the worker of ``command`` + ``env`` (started or replaced as needed)."""
        try:
            return self._workerFor(command, env).submit(args)
        except WorkerGone as exc:
            self.log(f"{exc}; starting a new one")
            self.stop()
        try:
            return self._workerFor(command, env).submit(args)  # once: a second failure is the run's error
        except WorkerGone:
            self.stop()
            raise

    def _workerFor(self, command: list[str], env: dict[str, str]) -> Worker:
        worker = self.worker
        if worker is not None:
            if not worker.alive:
                self.log(f"The SkullVAE worker had ended (exit code {worker.proc.poll()}); starting a new one")
            elif worker.key != Worker.keyOf(command, env):
                self.log("The Python or device settings changed; starting a new SkullVAE worker")
            elif self.stale:
                self.log("Packages or models changed; starting a new SkullVAE worker")
            else:
                return worker
            self.stop()
        self.stale = False
        self.worker = Worker(command, env)
        self.log(f"Started the SkullVAE worker (pid {self.worker.pid}): imports and models load once and stay loaded")
        return self.worker

    def markStale(self) -> None:
        """The next request starts a new worker (installed packages or models changed)."""
        self.stale = True

    def stop(self) -> None:
        """Kill the worker (if any) and forget it."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.kill()

    def forgetIfDead(self) -> None:
        """Kill and forget a worker that has ended (its folder goes now, not at the next request)."""
        if self.worker is not None and not self.worker.alive:
            self.stop()
