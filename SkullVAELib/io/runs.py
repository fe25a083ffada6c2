"""Run identity of output files: which files one call wrote together.

An output transaction (:class:`SkullVAELib.io.outputs.Transaction`) has a ``run_id`` (a uuid4).
Asked to (:meth:`~SkullVAELib.io.outputs.OutputPlan.add_run_manifest` or
:meth:`~SkullVAELib.io.outputs.Transaction.record_run`), it writes a small manifest
``<output>.run.json`` beside an output, renamed into place after every other file of the run::

    {"format": "skullvae-run", "version": 1, "run_id": "3f2a…", "created": "2025-01-01T12:00:00Z",
     "files": [{"name": "r.seg.nrrd", "path": "/abs/r.seg.nrrd", "sha256": "…", "bytes": 123}, …]}

:func:`check_run_identity` refuses a segmentation and an STL (or any files) that do not come
from the one run its manifest names: a crash between renames, or files copied from two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError

RUN_FORMAT = "skullvae-run"
RUN_VERSION = 1
MANIFEST_SUFFIX = ".run.json"
_MAX_MANIFEST_BYTES = 1 << 20


def manifest_path(output: str | os.PathLike) -> Path:
    """``<output>.run.json``: the manifest of the run that wrote ``output``."""
    output = Path(output)
    return output.with_name(output.name + MANIFEST_SUFFIX)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file."""
    from SkullVAELib.io.inputs import require_regular_file

    digest = hashlib.sha256()
    with open(require_regular_file(path), "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_text(run_id: str, files: dict[Path, Path]) -> str:
    """The manifest of run ``run_id`` listing ``files`` ({final path: file holding its bytes now})."""
    entries = [
        {"name": final.name, "path": str(final.absolute()), "sha256": file_sha256(now), "bytes": os.stat(now).st_size}
        for final, now in files.items()
    ]
    doc = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "run_id": run_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries,
    }
    return json.dumps(doc, indent=1) + "\n"


def read_manifest(output: str | os.PathLike) -> dict:
    """The run manifest of ``output``; one-line SkullVAEError when absent or unreadable."""
    from SkullVAELib.io.inputs import require_regular_file

    path = manifest_path(output)
    if not os.path.lexists(path):
        raise SkullVAEError(
            f"no run manifest ({path.name}): the run that wrote this file did not finish, or wrote no manifest", output
        )
    require_regular_file(path, "run manifest")
    try:
        with open(path, "rb") as stream:
            doc = json.loads(stream.read(_MAX_MANIFEST_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SkullVAEError(f"unreadable run manifest ({type(exc).__name__})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or not isinstance(doc.get("files"), list):
        raise SkullVAEError("not a SkullVAE run manifest", path)
    return doc


def check_run_identity(output: str | os.PathLike, *others: str | os.PathLike | None) -> str:
    """The run id that wrote ``output`` (e.g. the ``.seg.nrrd``) and every file of ``others`` (e.g. the
    implant STL; None entries are skipped); one-line SkullVAEError when they are not all that run's.

    Each file's name and sha256 must be listed in ``<output>.run.json``, so a file of another run, a
    file changed afterwards, or a pair left behind by a crash between renames is refused.
    """
    doc = read_manifest(output)
    run_id = str(doc.get("run_id", ""))
    listed = {(str(e.get("name")), str(e.get("sha256"))) for e in doc["files"] if isinstance(e, dict)}
    for path in (output, *[o for o in others if o is not None]):
        path = Path(path)
        if not path.exists():
            raise SkullVAEError(f"missing: run {run_id[:8]} wrote it, but it is not there now", path)
        if (path.name, file_sha256(path)) not in listed:
            raise SkullVAEError(
                f"is not the file run {run_id[:8]} wrote beside {Path(output).name} (another run's, or changed "
                "since); refusing to pair them",
                path,
            )
    return run_id
