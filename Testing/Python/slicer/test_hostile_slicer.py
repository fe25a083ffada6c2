"""The Slicer module's child process under hostile conditions (issue 10 items 13, 14), against the
real slicer-core wheel: modules planted in Slicer's working folder, a progress callback that
raises, and patient copies left behind by a killed Slicer."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_workers (also when `import slicer` loads us)

from SkullVAESlicerLib import nodes  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic  # noqa: E402
from SkullVAESlicerLib.process import makeRunFolder, removeStaleTempFolders  # noqa: E402
from slicer_workers import install_fake_worker  # noqa: E402

# fixtures scene, tiny_model, phantom_file, private_tmp: conftest.py


def _dead(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_modules_planted_in_the_working_folder_are_not_imported(
    scene, tiny_model, phantom_file, private_tmp, tmp_path, monkeypatch
):
    """Item 13: a SkullVAELib/, json.py or random.py in Slicer's working folder must not run."""
    planted = tmp_path / "slicer-cwd"
    marker = tmp_path / "planted-code-ran"
    code = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (planted / "SkullVAELib").mkdir(parents=True)
    (planted / "SkullVAELib" / "__init__.py").write_text(code + "raise SystemExit(7)\n")
    (planted / "SkullVAELib" / "__main__.py").write_text(code + "raise SystemExit(7)\n")
    (planted / "json.py").write_text(code)
    (planted / "random.py").write_text(code)
    monkeypatch.chdir(planted)
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    logic = SkullVAELogic()  # the warm worker starts in Slicer's working folder, isolated from it
    try:
        seg = logic.process(volume, tiny_model, gamma=1.0)
        again = logic.process(volume, tiny_model, gamma=0.5)  # a second request to the same worker
    finally:
        logic.cleanup()
    assert seg.GetSegmentation().GetNumberOfSegments() == 2 and again.GetSegmentation().GetNumberOfSegments() == 2
    assert not marker.exists(), marker.read_text()
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("blocking", [True, False])
def test_progress_callback_that_raises_ends_the_run_and_cleans_up(
    scene, tiny_model, phantom_file, private_tmp, blocking
):
    """Item 14: the child, its temporary copy of the patient volume and the 'running' state go."""
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    logic = SkullVAELogic()
    pids, finished = [], []

    def on_progress(stage, fraction, message):
        pids.append(logic._run.child.pid)
        raise ValueError("callback broke")

    with pytest.raises(ValueError, match="callback broke"):
        if blocking:
            logic.process(volume, tiny_model, onProgress=on_progress, onFinished=lambda n, e: finished.append(e))
        else:
            logic.process(
                volume,
                tiny_model,
                waitForCompletion=False,
                onProgress=on_progress,
                onFinished=lambda n, e: finished.append(e),
            )
            deadline = time.monotonic() + 120
            while not logic.poll() and time.monotonic() < deadline:
                time.sleep(0.05)
    assert not logic.isRunning
    assert pids and _dead(pids[0])
    assert list(private_tmp.iterdir()) == []
    assert len(finished) == 1 and isinstance(finished[0], ValueError)


def test_stale_run_folders_are_removed_at_start(scene, phantom_file, private_tmp, tiny_model, monkeypatch):
    """Item 14: a killed Slicer leaves /tmp/SkullVAE-*/input.nrrd; the next run removes those older than a day."""
    old, recent = makeRunFolder(str(private_tmp)), makeRunFolder(str(private_tmp))  # our own, marked
    other = private_tmp / "other-old"
    other.mkdir()
    for folder in (old, recent, other):
        (folder / "input.nrrd").write_bytes(b"patient")
    two_days_ago = time.time() - 2 * 86400
    for folder in (old, other):
        os.utime(folder, (two_days_ago, two_days_ago))
    install_fake_worker(monkeypatch, "sys.exit(3)")
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    with pytest.raises(RuntimeError, match="exit code 3"):
        SkullVAELogic().process(volume, tiny_model)
    assert sorted(p.name for p in private_tmp.iterdir()) == sorted([recent.name, "other-old"])
    assert removeStaleTempFolders(str(private_tmp), maxAge=0) == [str(recent)]
