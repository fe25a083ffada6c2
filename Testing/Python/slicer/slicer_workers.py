"""Helpers of the Slicer module's tests for the warm worker (real slicer-core wheel; the fixtures
scene, tiny_model, phantom_file and private_tmp are ../conftest.py's). A plain module, not a
conftest: ``from slicer_workers import ...`` (a second conftest.py would shadow the root one that
other tests import by name).

:func:`install_fake_worker` makes the logic's warm worker a stand-in ``skullvae worker``: a Python
loop that reads one JSON request per stdin line (``args``: the ``skullvae complete`` arguments),
runs ``body`` (which may print progress lines, write ``args``' ``--output``, sleep or exit; it sets
``code``) and then prints ``{"stage": "exit", "code": code}``, as the real worker does. It is
started with the Python of ``process.pythonExecutable()`` (patch that to change "the settings'
Python"). :func:`worker_leftovers` lists what runs left in a folder beyond the live worker's own
empty working folder.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO / "SkullVAE") not in sys.path:
    sys.path.insert(0, str(REPO / "SkullVAE"))

WORKER_LOOP = """\
import json, sys
starts = {starts!r}
if starts:
    open(starts, "a").write("start\\n")
for line in sys.stdin:
    args = json.loads(line)
    code = 0
{body}
    print(json.dumps({{"stage": "exit", "code": code}}), flush=True)
"""


def fake_worker_command(body: str, python: str, starts: str = "") -> list[str]:
    """The command of a stand-in worker that runs ``body`` per request (see the module docstring);
    each start appends a line to the file ``starts`` (when given)."""
    script = WORKER_LOOP.format(body=textwrap.indent(textwrap.dedent(body), "    "), starts=starts)
    return [python, "-c", script]


def install_fake_worker(monkeypatch, body: str, starts: Path | None = None) -> None:
    """Make ``logic.buildWorkerCommand`` start a stand-in worker running ``body`` per request."""
    from SkullVAESlicerLib import logic as logic_module
    from SkullVAESlicerLib import process

    def command(python=None):
        return fake_worker_command(body, python or process.pythonExecutable(), str(starts or ""))

    monkeypatch.setattr(logic_module, "buildWorkerCommand", command)


def worker_leftovers(folder: Path, logic) -> list[str]:
    """Names in ``folder`` other than the live worker's working folder, which must hold nothing but
    its marker (no copy of a patient volume stays between runs)."""
    from SkullVAESlicerLib.process import RUN_MARKER

    worker = logic.worker.worker
    home = worker.home if worker is not None and worker.alive else None
    if home is not None:
        assert sorted(p.name for p in home.iterdir()) == [RUN_MARKER]
    return sorted(p.name for p in folder.iterdir() if home is None or p != home)


def dead(pid: int | None) -> bool:
    """True when no process ``pid`` runs (gone, or a zombie)."""
    import psutil

    return pid is None or not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
