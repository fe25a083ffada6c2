"""Pretrained models for the module: list them, download one in a child process, resolve names.

No Qt and no torch here. Listing reads the registry and the user's model cache with
:mod:`SkullVAELib.models` (pure standard library). A download runs
``skullvae models download NAME --progress json`` in a child process (PythonSlicer, the
isolated bootstrap of process.py, a private working folder),
like a completion: its progress lines drive the panel's bar, Cancel kills it (the
partial file stays and the next download resumes it), and the same Python installs the
model that later runs the completion, so both agree on the cache folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .process import TEMP_PREFIX, ChildProcess, RunOutcome, childEnvironment, skullvaeCommand


@dataclass(frozen=True)
class ModelChoice:
    """One line of the model selector."""

    name: str
    installed: bool
    path: str  # the installed folder, "" when not installed
    downloadable: bool
    status: str

    @property
    def label(self) -> str:
        return self.name if self.installed else f"{self.name} ({self.status})"


def listModels() -> list[ModelChoice]:
    """Installed models first, then registry entries that are not installed."""
    from SkullVAELib.models import installed_models, load_registry

    registry = load_registry()
    installed = {m.name: m for m in installed_models()}
    choices = [ModelChoice(n, True, str(m.path), False, "installed") for n, m in installed.items()]
    choices += [
        ModelChoice(e.name, False, "", e.downloadable, _shortStatus(e))
        for e in registry.entries
        if e.name not in installed
    ]
    return choices


def _shortStatus(entry) -> str:
    """A few words for the selector: "download", "not released yet", ..."""
    if entry.downloadable:
        return "download"
    return "not released yet" if not entry.released else entry.status()


def resolveModelPath(nameOrPath) -> Path:
    """An existing folder as given; else the folder of an installed model with that name.

    Raises ValueError with a one-line message (names how to get the model) otherwise.
    """
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.models import resolve_model

    try:
        return Path(resolve_model(str(nameOrPath).strip()))
    except SkullVAEError as exc:
        raise ValueError(str(exc)) from None


def buildDownloadCommand(name: str, overwrite: bool = False, python: str | None = None) -> list[str]:
    """The argument list of ``skullvae models download NAME`` with JSON progress."""
    args = ["models", "download", name, "--progress", "json"] + (["--overwrite"] if overwrite else [])
    return skullvaeCommand(args, python)


class ModelDownload:
    """One running download: ``poll()`` from a timer or ``wait()``; ``cancel()`` stops it.

    Args:
        name: registry name.
        onProgress: ``(stage, fraction, message)``; fraction None for log lines.
        onFinished: ``(path or None, error or None)`` once, when it ends.
        overwrite: download and install again even if the model is installed.
    """

    def __init__(self, name: str, onProgress=None, onFinished=None, overwrite: bool = False) -> None:
        self.name = name
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.path: Path | None = None
        self.error: BaseException | None = None
        self.done = False
        self.workDir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
        try:
            env = childEnvironment()
            # the child must install where this process lists (set in Slicer's console after startup, too)
            env.update({k: os.environ[k] for k in ("SKULLVAE_HOME", "SKULLVAE_REGISTRY") if os.environ.get(k)})
            self.child = ChildProcess(buildDownloadCommand(name, overwrite), env, cwd=self.workDir)
        except BaseException:
            shutil.rmtree(self.workDir, ignore_errors=True)
            raise

    def _onEvent(self, event) -> None:
        if self.onProgress is not None:
            self.onProgress(event.stage, event.fraction, event.message)

    def poll(self) -> bool:
        """Handle pending output without blocking; True once the download has ended."""
        if self.done:
            return True
        outcome = self.child.drain(self._onEvent)
        if outcome is not None:
            self._end(outcome)
        return self.done

    def wait(self) -> Path:
        """Block until done; the installed folder, or raise the error."""
        if not self.done:
            self._end(self.child.wait(self._onEvent))
        if self.error is not None:
            raise self.error
        return self.path

    def cancel(self) -> None:
        self.child.kill()

    def _end(self, outcome: RunOutcome) -> None:
        from .logic import SkullVAECancelled

        if outcome.cancelled:
            self.error = SkullVAECancelled(f"Download of {self.name} cancelled (it resumes next time)")
        elif outcome.returnCode == 2:
            self.error = ValueError(outcome.errorMessage.split(": error: ", 1)[-1].strip())
        elif outcome.returnCode != 0:
            self.error = RuntimeError(f"Download of {self.name} failed (exit code {outcome.returnCode}): "
                                      f"{outcome.errorMessage}")  # fmt: skip
        else:
            self.path = Path((outcome.result or {}).get("path", ""))
        self.done = True
        shutil.rmtree(self.workDir, ignore_errors=True)
        if self.onFinished is not None:
            self.onFinished(self.path, self.error)
