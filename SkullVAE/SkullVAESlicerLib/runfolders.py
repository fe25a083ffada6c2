"""The module's private temporary folders: one per run (a copy of the patient volume, the results) and
one per warm worker (its working folder). Each is made by :func:`makeRunFolder` (mode 0700, an
unpredictable name, a marker file); :func:`removeStaleTempFolders` removes those a killed Slicer left,
and only folders that carry the marker. No Qt, no slicer.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

TEMP_PREFIX = "SkullVAE-"  # temporary folders of runs: input copy, results
#: A file inside every run folder this module makes: only folders holding it are ever removed as stale.
RUN_MARKER = ".skullvae-slicer-run"
STALE_TEMP_AGE_S = 24 * 3600  # a run's folder older than this belongs to a killed Slicer


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
