"""Python dependencies inside Slicer, installed only after the user agrees, in ONE dialog.

torch comes from the PyTorch extension (``PyTorchUtils``), which picks the CUDA build that
matches the driver, or CPU. The other packages (Resources/requirements.txt: only what
inference needs, lower bounds, never pinned with ``==``, never SimpleITK/numpy/vtk, which
Slicer ships) go through Slicer's pip helpers: ``pip_ensure`` (``slicer.packaging`` or
``slicer.pydeps``, Slicer ≥ 5.11) or ``slicer.util.pip_install``. A package counts as present only
when its installed version satisfies the bound (``packaging``), so an old SciPy or torch is updated,
not accepted. The one confirmation lists everything; torch and pip then install without asking again.
While pip installs ours, the installed torch, numpy, SimpleITK and vtk are constraints
(:data:`KEEP_INSTALLED`): a dependency that wants a newer one gets an older release of itself instead
of pip replacing the PyTorch extension's build (CPU, or CUDA for the driver) with PyPI's, or
Slicer's numpy. MONAI is not installed: completion never imports it (training only).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
import tempfile
from pathlib import Path

TORCH_REQUIREMENT = ">=2.1"
NEVER_INSTALL = {"simpleitk", "numpy", "vtk", "torch"}
#: Installed by Slicer or the PyTorch extension: pip keeps their installed versions while it installs ours.
KEEP_INSTALLED = ("torch", "numpy", "SimpleITK", "vtk")
REQUESTER = "SkullVAE"


def requirementsFile() -> Path | None:
    """Resources/requirements.txt next to the module (installed) or in the repository root (source)."""
    from . import resourcePath

    path = resourcePath("requirements.txt")
    return path if path.is_file() else None


def readRequirements(path: Path | None = None) -> list[str]:
    """Requirement lines without comments and without the packages Slicer owns."""
    path = path or requirementsFile()
    if path is None:
        return []
    found = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and _distributionName(line).lower() not in NEVER_INSTALL:
            found.append(line)
    return found


def _distributionName(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def _packaging():
    """``(SpecifierSet, Version)`` of ``packaging`` (pip's vendored copy where it is not installed)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # pragma: no cover - Slicer ships packaging; pip always vendors it
        from pip._vendor.packaging.specifiers import SpecifierSet
        from pip._vendor.packaging.version import Version
    return SpecifierSet, Version


def installedVersion(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unsatisfiedRequirements(requirements: list[str], versionOf=installedVersion) -> list[str]:
    """The requirements that are missing or whose installed version is outside the bound.

    Args:
        requirements: lines such as ``scipy>=1.10``.
        versionOf: ``name -> version string or None`` (default: the installed distributions).
    """
    SpecifierSet, Version = _packaging()
    unsatisfied = []
    for requirement in requirements:
        name = _distributionName(requirement)
        spec = requirement[len(name) :].split(";", 1)[0].strip()
        version = versionOf(name)
        if version is None:
            unsatisfied.append(requirement)
            continue
        try:
            ok = not spec or SpecifierSet(spec).contains(Version(version), prereleases=True)
        except Exception:  # noqa: BLE001 - an unparsable installed version does not satisfy a bound
            ok = False
        if not ok:
            unsatisfied.append(requirement)
    return unsatisfied


def keepInstalledConstraints(versionOf=installedVersion) -> list[str]:
    """pip constraint lines ``name==version`` holding the installed :data:`KEEP_INSTALLED` packages
    (one that is missing or whose version pip could not read is left out)."""
    _SpecifierSet, Version = _packaging()
    lines = []
    for name in KEEP_INSTALLED:
        version = versionOf(name)
        try:
            Version(version or "")
        except Exception:  # noqa: BLE001 - not installed, or a version string pip would refuse
            continue
        lines.append(f"{name}=={version}")
    return lines


def missingRequirements(requirements: list[str]) -> list[str]:
    """Old name of :func:`unsatisfiedRequirements` (now checks versions too)."""
    return unsatisfiedRequirements(requirements)


def planInstall(torchInstalled: bool, requirements: list[str] | None = None, versionOf=installedVersion) -> dict:
    """What an install would do: ``{"torch": bool, "packages": [...], "message": str}``."""
    torchVersion = versionOf("torch") if torchInstalled else None
    needTorch = torchVersion is None or bool(
        unsatisfiedRequirements([f"torch{TORCH_REQUIREMENT}"], lambda _: torchVersion)
    )
    packages = unsatisfiedRequirements(readRequirements() if requirements is None else requirements, versionOf)
    lines = [f"PyTorch {TORCH_REQUIREMENT} (GPU build for your driver, or CPU; several minutes)"] if needTorch else []
    lines += packages
    message = (
        "SkullVAE needs these Python packages, which will be downloaded and installed now:\n\n" + "\n".join(lines)
        if lines
        else ""
    )
    return {"torch": needTorch, "packages": packages, "message": message}


def setupPythonRequirements(
    askConfirmation: bool = True, log=print, confirm=None, torchLogic=None, pipEnsure=None, versionOf=installedVersion
) -> bool:
    """Install what is missing or too old, after ONE confirmation. Returns True when all is present.

    ``confirm(message) -> bool``, ``torchLogic`` (PyTorchUtilsLogic) and ``pipEnsure(requirements)``
    default to Slicer's; tests pass their own. Raises RuntimeError when declined or still unsatisfied.
    """
    import slicer

    torchLogic = torchLogic or _pyTorchLogic()
    if torchLogic is None:
        raise RuntimeError("The PyTorch extension is required: install 'PyTorch' from the Extensions Manager")
    plan = planInstall(torchLogic.torchInstalled(), versionOf=versionOf)
    if not plan["message"]:
        return True
    confirm = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, "SkullVAE dependencies"))
    if askConfirmation and not confirm(plan["message"]):
        raise RuntimeError("Python packages required by SkullVAE were not installed (declined)")
    if plan["torch"]:
        log("Installing PyTorch (this may take several minutes)...")
        if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            raise RuntimeError("PyTorch is required; its installation failed")
    if plan["packages"]:
        log("Installing " + ", ".join(plan["packages"]))
        (pipEnsure or (lambda packages: _slicerPipEnsure(packages, versionOf)))(plan["packages"])
    still = unsatisfiedRequirements(plan["packages"], versionOf)
    if still:
        raise RuntimeError("These Python packages are still missing or too old: " + ", ".join(still))
    return True


def _slicerPipEnsure(requirements: list[str], versionOf=installedVersion) -> None:
    """Install with Slicer's helper, without its own confirmation (ours was the one dialog), the
    installed torch, numpy, SimpleITK and vtk held by a constraints file."""
    import slicer

    ensure = _pipEnsureFunction()
    with tempfile.TemporaryDirectory(prefix="SkullVAE-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("".join(line + "\n" for line in keepInstalledConstraints(versionOf)))
        parameters = inspect.signature(ensure).parameters if ensure is not None else {}
        if "constraints" not in parameters:  # Slicer <= 5.10: pip's own arguments
            slicer.util.pip_install([*requirements, "-c", str(constraints)])
            return
        from packaging.requirements import Requirement

        options = {k: False for k in ("prompt_install", "prompt") if k in parameters}
        if "requester" in parameters:
            options["requester"] = REQUESTER
        ensure([Requirement(r) for r in requirements], constraints=str(constraints), **options)


def _pipEnsureFunction():
    """Slicer's ``pip_ensure`` (``slicer.packaging`` or ``slicer.pydeps``, Slicer >= 5.11), else None.
    Imported: a submodule is an attribute of ``slicer`` only once something has imported it."""
    for name in ("slicer.packaging", "slicer.pydeps"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        ensure = getattr(module, "pip_ensure", None)
        if ensure is not None:
            return ensure
    return None


def _pyTorchLogic():
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()
