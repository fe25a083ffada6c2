"""Models for the module: list, download (after licence acceptance), install from a file, remove.

No Qt and no torch here. Listing and removing use :mod:`SkullVAELib.models` (pure standard
library) in Slicer's process. A download or an install runs ``skullvae models download|install
... --progress json`` in a child process (PythonSlicer, the isolated bootstrap of process.py, a
private working folder), like a completion: its progress lines drive the panel's bar, Cancel
kills it (a partial download stays and the next one resumes it), and the same Python installs
the model that later runs the completion, so both agree on the cache folder. Installing checks
that the bundle loads, which needs torch: that is why it is a child too.

:class:`ModelsLogic` is the model half of ``SkullVAELogic`` (a base class of it); it never
imports the logic module (no import cycle).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .process import ChildProcess, RunOutcome, SkullVAECancelled, childEnvironment, makeRunFolder, skullvaeCommand

#: Weights under this licence are the project's own; any other licence must be accepted first.
PROJECT_LICENCE = "Apache-2.0"
LICENCE_SETTING = "SkullVAE/AcceptedLicences/"  # + model name -> sha256 of the accepted licence text


@dataclass(frozen=True)
class ModelChoice:
    """One line of the model selector."""

    name: str
    installed: bool
    path: str  # the installed folder, "" when not installed
    downloadable: bool
    status: str
    licence: str = ""

    @property
    def label(self) -> str:
        return self.name if self.installed else f"{self.name} ({self.status})"


class LicenceNotAccepted(ValueError):
    """A download of weights whose licence the user has not accepted (``acceptLicence`` first)."""


def listModels() -> list[ModelChoice]:
    """Installed models first, then registry entries that are not installed."""
    from SkullVAELib.models import installed_models, load_registry

    registry = load_registry()
    installed = {m.name: m for m in installed_models()}
    licences = {e.name: e.licence for e in registry.entries}
    choices = [ModelChoice(n, True, str(m.path), False, "installed", licences.get(n, "")) for n, m in installed.items()]
    choices += [
        ModelChoice(e.name, False, "", e.downloadable, _shortStatus(e), e.licence)
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


def licenceNeedsAcceptance(licence: str) -> bool:
    """True for weights under any licence but the project's own (e.g. CC BY-NC-SA, from SkullFix)."""
    text = (licence or "").strip()
    return bool(text) and not text.startswith(PROJECT_LICENCE)


def licenceDigest(licence: str) -> str:
    """What is remembered of an accepted licence: a changed text must be accepted again."""
    return hashlib.sha256(licence.strip().encode("utf-8")).hexdigest()


def buildDownloadCommand(name: str, overwrite: bool = False, python: str | None = None) -> list[str]:
    """The argument list of ``skullvae models download NAME`` with JSON progress."""
    args = ["models", "download", name, "--progress", "json"] + (["--overwrite"] if overwrite else [])
    return skullvaeCommand(args, python)


def buildInstallCommand(source: str, name: str | None = None, overwrite: bool = False, python=None) -> list[str]:
    """The argument list of ``skullvae models install SOURCE`` (a bundle folder or archive) with JSON progress."""
    args = ["models", "install", str(source), "--progress", "json"]
    args += (["--name", name] if name else []) + (["--overwrite"] if overwrite else [])
    return skullvaeCommand(args, python)


class ModelJob:
    """One running download or install: ``poll()`` from a timer or ``wait()``; ``cancel()`` stops it.

    Args:
        args: the child's command (:func:`buildDownloadCommand`, :func:`buildInstallCommand`).
        label: what the messages call it ("Download of NAME").
        onProgress: ``(stage, fraction, message)``; fraction None for log lines.
        onFinished: ``(path or None, error or None)`` once, when it ends.
    """

    def __init__(self, args: list[str], label: str, onProgress=None, onFinished=None) -> None:
        self.label = label
        self.onProgress = onProgress
        self.onFinished = onFinished
        self.path: Path | None = None
        self.error: BaseException | None = None
        self.done = False
        self.workDir = makeRunFolder()
        try:
            env = childEnvironment()
            # the child must install where this process lists (set in Slicer's console after startup, too)
            env.update({k: os.environ[k] for k in ("SKULLVAE_HOME", "SKULLVAE_REGISTRY") if os.environ.get(k)})
            self.child = ChildProcess(args, env, cwd=str(self.workDir))
        except BaseException:
            shutil.rmtree(self.workDir, ignore_errors=True)
            raise

    def _onEvent(self, event) -> None:
        if self.onProgress is not None:
            self.onProgress(event.stage, event.fraction, event.message)

    def poll(self) -> bool:
        """Handle pending output without blocking; True once the job has ended."""
        if self.done:
            return True
        outcome = self.child.drain(self._onEvent)
        if outcome is not None:
            self._end(outcome)
        return self.done

    def wait(self, timeout: float | None = None) -> Path:
        """Block until done (at most ``timeout`` s: then the child is killed and SkullVAETimeout
        raised); the installed folder, or raise the error."""
        from .process import SkullVAETimeout

        if not self.done:
            try:
                outcome = self.child.wait(self._onEvent, timeout=timeout)
            except TimeoutError:
                self.child.kill()
                self._end(self.child.wait(self._onEvent))
                self.error = SkullVAETimeout(f"{self.label} did not finish within {timeout:g} s and was stopped")
            else:
                self._end(outcome)
        if self.error is not None:
            raise self.error
        return self.path

    def cancel(self) -> None:
        self.child.kill()

    def _end(self, outcome: RunOutcome) -> None:
        if outcome.cancelled:
            self.error = SkullVAECancelled(f"{self.label} cancelled (a download resumes next time)")
        elif outcome.returnCode == 2:
            self.error = ValueError(outcome.errorMessage.split(": error: ", 1)[-1].strip())
        elif outcome.returnCode != 0:
            self.error = RuntimeError(f"{self.label} failed (exit code {outcome.returnCode}): {outcome.errorMessage}")
        else:
            self.path = Path((outcome.result or {}).get("path", ""))
        self.done = True
        shutil.rmtree(self.workDir, ignore_errors=True)
        if self.onFinished is not None:
            self.onFinished(self.path, self.error)


ModelDownload = ModelJob  # the old name


class ModelsLogic:
    """The model half of ``SkullVAELogic``: list, licence, download, install from a file, remove.

    ``self.settings``: where accepted licences are remembered, any mapping with ``get``/``__setitem__``
    (the panel passes the user's ``qt.QSettings``; the default is this object's own dict).
    ``self.log(text)`` is the logic's.
    """

    settings: object = None
    _job: ModelJob | None = None

    @staticmethod
    def listModels() -> list[ModelChoice]:
        """Installed models and registry entries: ``ModelChoice(name, installed, path, downloadable, status, licence)``."""
        return listModels()

    @staticmethod
    def modelPath(nameOrPath) -> str:
        """The folder of an installed model name (or a folder as given); ValueError otherwise."""
        return str(resolveModelPath(nameOrPath))

    def _settings(self):
        if self.settings is None:
            self.settings = {}
        return self.settings

    def licenceToAccept(self, name: str) -> str | None:
        """The licence text the user must accept before downloading ``name``; None when there is none
        (the project's own licence) or it was accepted already."""
        from SkullVAELib.models import load_registry

        entry = load_registry().get(name)
        licence = entry.licence if entry is not None else ""
        if not licenceNeedsAcceptance(licence):
            return None
        accepted = self._settings().get(LICENCE_SETTING + name)
        return None if accepted == licenceDigest(licence) else licence

    def acceptLicence(self, name: str) -> None:
        """Remember that the user accepted the registry licence of ``name`` (per model)."""
        from SkullVAELib.models import load_registry

        entry = load_registry().get(name)
        if entry is None:
            raise ValueError(f"no model {name!r} in the registry")
        self._settings()[LICENCE_SETTING + name] = licenceDigest(entry.licence)

    @property
    def isDownloading(self) -> bool:
        return self._job is not None and not self._job.done

    def downloadModel(self, name: str, waitForCompletion: bool = True, onProgress=None, onFinished=None,
                      overwrite: bool = False, force: bool | None = None, timeout: float | None = None):  # fmt: skip
        """Download, verify and install the registry model ``name`` (child process; resumable).

        Refuses with :class:`LicenceNotAccepted` (a ValueError naming the licence) until
        :meth:`acceptLicence` was called for weights under another licence than the project's.
        Returns the installed folder when ``waitForCompletion`` (``timeout`` s at most); else None,
        and :meth:`pollDownload` must be called from a timer. ``onFinished(path, error)``.
        ``overwrite`` downloads again even if installed (``force``: its deprecated old name).
        """
        import warnings

        if force is not None:
            warnings.warn("downloadModel(force=...) is deprecated; use overwrite=...", DeprecationWarning, stacklevel=2)
            overwrite = overwrite or bool(force)
        licence = self.licenceToAccept(name)
        if licence is not None:
            raise LicenceNotAccepted(f"the weights of {name} are under the licence '{licence}': accept it first")
        return self._startJob(buildDownloadCommand(name, overwrite), f"Download of {name}", waitForCompletion,
                              onProgress, onFinished, timeout)  # fmt: skip

    def installModel(self, source, name: str | None = None, overwrite: bool = False, waitForCompletion: bool = True,
                     onProgress=None, onFinished=None, timeout: float | None = None):  # fmt: skip
        """Install a bundle folder or a .zip/.tar archive (``skullvae models install``), like :meth:`downloadModel`."""
        path = Path(str(source)).expanduser()
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder to install")
        return self._startJob(buildInstallCommand(str(path), name, overwrite), f"Install of {path.name}",
                              waitForCompletion, onProgress, onFinished, timeout)  # fmt: skip

    def removeModel(self, name: str) -> str:
        """Delete the installed model ``name``; returns the removed folder. ValueError if not installed."""
        from SkullVAELib.core.errors import SkullVAEError
        from SkullVAELib.models import remove_model

        if self.isDownloading:
            raise RuntimeError("a model download or install is running; wait for it or cancel it first")
        try:
            removed = remove_model(name)
        except SkullVAEError as exc:
            raise ValueError(str(exc)) from None
        self.log(f"Removed model {name} ({removed})")
        self._modelsChanged()
        return str(removed)

    def _modelsChanged(self) -> None:
        """Hook: a model was installed or removed (``SkullVAELogic`` replaces its warm worker)."""

    def _startJob(self, args, label, waitForCompletion, onProgress, onFinished, timeout):
        if self.isDownloading:
            raise RuntimeError("a model download or install is already running; cancel it first")
        self.log(f"{label}...")

        def finished(path, error) -> None:
            if error is None:
                self._modelsChanged()
            if onFinished is not None:
                onFinished(path, error)

        self._job = ModelJob(args, label, onProgress=onProgress, onFinished=finished)
        if not waitForCompletion:
            return None
        path = self._job.wait(timeout)
        self.log(f"{label}: installed in {path}")
        return str(path)

    def pollDownload(self) -> bool:
        """Handle the running download's or install's pending output; True once it has ended (or none runs)."""
        return self._job is None or self._job.poll()

    def cancelDownload(self) -> None:
        if self.isDownloading:
            self.log("Cancelling...")
            self._job.cancel()
