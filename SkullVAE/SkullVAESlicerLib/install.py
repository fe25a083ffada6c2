"""Python dependencies inside Slicer, installed only after the user agrees.

torch comes from the PyTorch extension (``PyTorchUtils``), which picks the CUDA build that
matches the driver, or CPU. The other packages (Resources/requirements.txt, never pinned
with ``==``, never SimpleITK/numpy/vtk, which Slicer ships) go through Slicer's pip helpers:
``slicer.packaging.pip_ensure`` (Slicer ≥ 5.11) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

TORCH_REQUIREMENT = ">=2.1"
NEVER_INSTALL = {"simpleitk", "numpy", "vtk", "torch"}


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
        if line and re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() not in NEVER_INSTALL:
            found.append(line)
    return found


def _distributionName(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]


def missingRequirements(requirements: list[str]) -> list[str]:
    """Those requirements whose import name is not importable (import name = dist name, '-'→'_')."""
    aliases = {"scikit-learn": "sklearn"}
    missing = []
    for req in requirements:
        name = _distributionName(req)
        module = aliases.get(name.lower(), name.replace("-", "_"))
        if importlib.util.find_spec(module) is None:
            missing.append(req)
    return missing


def setupPythonRequirements(askConfirmation: bool = True, log=print) -> bool:
    """Install what is missing, asking first. Returns True when everything is present."""
    import slicer

    torchLogic = _pyTorchLogic()
    if torchLogic is None:
        raise RuntimeError("The PyTorch extension is required: install 'PyTorch' from the Extensions Manager")
    if not torchLogic.torchInstalled():
        log("Installing PyTorch (this may take several minutes)...")
        torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch is required; installation was declined or failed")
    missing = missingRequirements(readRequirements())
    if not missing:
        return True
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "SkullVAE needs these Python packages, which will be downloaded and installed now:\n\n" + "\n".join(missing),
        "SkullVAE dependencies",
    ):
        raise RuntimeError("Python packages required by SkullVAE were not installed: " + ", ".join(missing))
    log("Installing " + ", ".join(missing))
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(missing)
    else:
        slicer.util.pip_install(missing)
    return True


def _pyTorchLogic():
    try:
        import PyTorchUtils
    except ImportError:
        return None
    return PyTorchUtils.PyTorchUtilsLogic()
