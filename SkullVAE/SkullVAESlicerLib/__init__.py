"""Helpers of the SkullVAE Slicer module, kept in a package so Slicer does not load them as modules.

- ``nodes``: MRML/vtk node work (no Qt), runs under the slicer-core wheel.
- ``inputs``: a segmentation input's bone segments and the grid they are written on; ``outputs``: the
  node a result fills and its place (the input's parent transform, under the input); no Qt.
- ``process``: the child-process runner (command, progress lines, cancel), no Qt;
  ``runfolders``: its private temporary folders.
- ``worker``: the warm ``skullvae worker`` child kept alive between runs, no Qt.
- ``options``: a run's options checked (sources, finishing, model, γ, input kind) and the panel's rules
  (which settings can matter: γ, mirror, self-check, input kind, bone threshold), no Qt.
- ``logic``: ``SkullVAELogic`` (console, batch and panel), no Qt; ``models``: its model half;
  ``results``: the result the Slicer way.
- ``install``: dependency setup inside Slicer (asks first).
- ``widget``: the Qt panel parts.

``resourcePath`` finds ``Resources/`` files for all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Where the module's files are: next to the module folder (installed extension: SkullVAE.py,
# SkullVAELib/ and Resources/ in qt-scripted-modules/) or one level up (source tree: the
# repository root holds SkullVAELib/ and Resources/).
_HERE = Path(__file__).resolve().parent
ROOTS = (_HERE.parent, _HERE.parent.parent)


def resourcePath(relative: str) -> Path:
    """``Resources/<relative>`` of the first root that has it (else the installed location).

    The one Resources lookup of the Slicer side (icon, .ui, requirements.txt).
    """
    for folder in ROOTS:
        candidate = folder / "Resources" / relative
        if candidate.exists():
            return candidate
    return ROOTS[0] / "Resources" / relative


def _ensureLibraryImportable() -> None:
    """Make ``import SkullVAELib`` work from a source checkout too."""
    try:
        import SkullVAELib  # noqa: F401
    except ImportError:
        for folder in ROOTS:
            if (folder / "SkullVAELib" / "__init__.py").is_file():
                sys.path.insert(0, str(folder))
                return


_ensureLibraryImportable()
