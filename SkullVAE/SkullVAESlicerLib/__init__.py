"""Helpers of the SkullVAE Slicer module, kept in a package so Slicer does not load them as modules.

- ``nodes``: MRML/vtk node work (no Qt), runs under the slicer-core wheel.
- ``process``: the child-process runner (command, progress lines, cancel), no Qt.
- ``logic``: ``SkullVAELogic`` (console, batch and panel), no Qt.
- ``install``: dependency setup inside Slicer (asks first).
- ``widget``: the Qt panel parts.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _ensureLibraryImportable() -> None:
    """Make ``import SkullVAELib`` work from a source checkout too.

    Installed extension: SkullVAELib sits next to this package (qt-scripted-modules/).
    Source tree: it sits in the repository root, one level above the module folder.
    """
    try:
        import SkullVAELib  # noqa: F401
    except ImportError:
        here = Path(__file__).resolve().parent
        for folder in (here.parent, here.parent.parent):
            if (folder / "SkullVAELib" / "__init__.py").is_file():
                sys.path.insert(0, str(folder))
                return


_ensureLibraryImportable()
