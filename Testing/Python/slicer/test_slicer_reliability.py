"""Issue 25 §2-§4, the Slicer-only items, against the real slicer-core wheel; each test builds its own
bad input: batch.py's output onto its input, a link planted at batch.py's old temporary name,
other people's ``$TMPDIR/SkullVAE-*`` folders, a child (batch.py's one-shot child, or the panel's
warm worker) that never ends, a missing psutil."""

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

from SkullVAESlicerLib import logic as logic_module  # noqa: E402
from SkullVAESlicerLib import models as models_module  # noqa: E402
from SkullVAESlicerLib import nodes, process  # noqa: E402
from SkullVAESlicerLib import worker as worker_module  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAELogic, SkullVAETimeout  # noqa: E402
from SkullVAESlicerLib.process import (  # noqa: E402
    RUN_MARKER,
    buildCompleteCommand,
    makeRunFolder,
    removeStaleTempFolders,
)
from slicer_workers import dead, install_fake_worker  # noqa: E402

# fixtures scene, tiny_model, phantom_file, private_tmp: conftest.py

SLEEPER = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(p.pid, flush=True)\n"
    "time.sleep(120)\n"
)


def _batch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("skullvae_batch_r", REPO / "SkullVAE" / "Scripts" / "batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_cli(result: Path) -> str:
    """A child that writes ``result`` where `skullvae complete` would, and reports like it."""
    record = {"defect": "cranial", "implant_source": "rimfit", "gamma_used": False}
    return (
        "import json, shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"shutil.copyfile({str(result)!r}, args[args.index('--output') + 1])\n"
        f"print(json.dumps({{'stage': 'done', 'fraction': 1.0, 'message': '', 'result': {record!r}}}), flush=True)\n"
    )


@pytest.fixture
def result_file(phantom_file, tmp_path) -> Path:
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation

    like = read_skull(phantom_file)
    implant = like.mask.copy()
    implant[:, :, : like.shape[2] - 6] = False
    path = tmp_path / "prepared" / "result.seg.nrrd"
    path.parent.mkdir()
    write_segmentation(path, like, [Segment("Completed skull", like.mask), Segment("Implant", implant & like.mask)])
    return path


# --- §2: batch.py --output equal to --input ----------------------------------------------------
def test_batch_refuses_output_onto_its_input(tmp_path, result_file):
    batch = _batch_module()
    source = tmp_path / "in.seg.nrrd"
    source.write_bytes(result_file.read_bytes())
    before = source.read_bytes()
    link = tmp_path / "alias.seg.nrrd"
    link.symlink_to(source)
    hard = tmp_path / "hard.seg.nrrd"
    os.link(source, hard)
    for output in (source, link, hard, tmp_path / "." / "in.seg.nrrd"):
        lines = []
        code = batch.runBatch(["--input", str(source), "--output", str(output)], log=lines.append)
        assert code == 2, lines
        assert "same file as --input" in lines[-1]
    assert source.read_bytes() == before


# --- §3: batch.py writes through the atomic writer --------------------------------------------
def test_batch_never_follows_a_link_planted_at_a_temporary_name(
    scene, phantom_file, result_file, tmp_path, private_tmp, monkeypatch
):
    def command(*args, **kwargs):
        real = buildCompleteCommand(*args, **kwargs)
        return [sys.executable, "-c", _fake_cli(result_file), *real[real.index("complete") :]]

    monkeypatch.setattr(logic_module, "buildCompleteCommand", command)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "result.seg.nrrd"
    (out_dir / ".result.seg.nrrd.tmp.seg.nrrd").symlink_to(victim)  # the old predictable temporary name
    lines = []
    code = _batch_module().runBatch(["--input", str(phantom_file), "--output", str(output)], log=lines.append)
    assert code == 0, lines
    assert victim.read_text() == "precious"
    assert output.is_file() and not output.is_symlink()
    import slicerio

    names = {s["name"] for s in slicerio.read_segmentation(str(output), skip_voxels=True)["segments"]}
    assert names == {"Patient bone", "Implant"}
    leftovers = [
        p.name for p in out_dir.iterdir() if p.name not in ("result.seg.nrrd", ".result.seg.nrrd.tmp.seg.nrrd")
    ]
    assert leftovers == []


# --- §3: only the module's own temporary folders are removed ------------------------------------
def test_stale_cleanup_removes_only_folders_the_module_marked(private_tmp):
    two_days_ago = time.time() - 2 * 86400
    ours = makeRunFolder(str(private_tmp))
    (ours / "input.nrrd").write_bytes(b"patient")
    users = private_tmp / "SkullVAE-my-notes"  # a user's own folder with our prefix
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    faked = private_tmp / "SkullVAE-linked-marker"  # a marker that is a link is not ours
    faked.mkdir()
    (faked / RUN_MARKER).symlink_to(ours / RUN_MARKER)
    for folder in (ours, users, faked):
        os.utime(folder, (two_days_ago, two_days_ago))
    recent = makeRunFolder(str(private_tmp))
    removed = removeStaleTempFolders(str(private_tmp))
    assert removed == [str(ours)]
    assert users.is_dir() and (users / "notes.txt").read_text() == "keep me" and faked.is_dir() and recent.is_dir()
    assert (recent / RUN_MARKER).is_file() and oct(recent.stat().st_mode & 0o777) == "0o700"


def test_a_completion_start_keeps_other_skullvae_folders(scene, phantom_file, private_tmp, monkeypatch):
    old = private_tmp / "SkullVAE-old-but-not-ours"
    old.mkdir()
    os.utime(old, (time.time() - 5 * 86400,) * 2)
    install_fake_worker(monkeypatch, "sys.exit(3)")  # the worker dies during the request
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    with pytest.raises(RuntimeError, match="exit code 3"):
        SkullVAELogic().process(volume)
    assert [p.name for p in private_tmp.iterdir()] == ["SkullVAE-old-but-not-ours"]  # the dead worker's went


# --- §4: the blocking call has a timeout -------------------------------------------------------
@pytest.mark.parametrize("warm", [True, False])
def test_blocking_completion_times_out_and_stops_its_child(scene, phantom_file, private_tmp, monkeypatch, warm):
    if warm:  # the panel's and the console's warm worker: it is killed (the next run starts a new one)
        install_fake_worker(monkeypatch, SLEEPER.replace("import subprocess, sys, time", "import subprocess, time"))
    else:  # batch.py's one-shot child
        monkeypatch.setattr(logic_module, "buildCompleteCommand", lambda *a, **k: [sys.executable, "-c", SLEEPER])
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    pids, errors = [], []
    logic = SkullVAELogic(warmWorker=warm)
    with pytest.raises(SkullVAETimeout, match="did not finish within 3 s"):
        logic.process(
            volume,
            onProgress=lambda stage, fraction, message: pids.append(int(message)),
            onFinished=lambda node, error: errors.append(error),
            timeout=3,
        )
    assert pids and dead(pids[0]) and logic.workerPid is None
    assert not logic.isRunning and len(errors) == 1 and isinstance(errors[0], SkullVAETimeout)
    assert {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} == before
    assert list(private_tmp.iterdir()) == []


def test_a_blocking_model_install_times_out(private_tmp, tmp_path, monkeypatch):
    monkeypatch.setattr(models_module, "buildInstallCommand", lambda *a, **k: [sys.executable, "-c", SLEEPER])
    (tmp_path / "bundle").mkdir()
    with pytest.raises(SkullVAETimeout, match="did not finish within 2 s"):
        SkullVAELogic().installModel(tmp_path / "bundle", timeout=2)
    assert list(private_tmp.iterdir()) == []


def test_batch_timeout_exit_code(phantom_file, tmp_path, private_tmp, monkeypatch):
    monkeypatch.setattr(logic_module, "buildCompleteCommand", lambda *a, **k: [sys.executable, "-c", SLEEPER])
    lines = []
    args = ["--input", str(phantom_file), "--output", str(tmp_path / "o.seg.nrrd"), "--timeout", "2"]
    assert _batch_module().runBatch(args, log=lines.append) == 124
    assert "did not finish within 2 s" in lines[-1] and not (tmp_path / "o.seg.nrrd").exists()


# --- psutil is needed to cancel: it is imported before any child starts --------------------------
@pytest.mark.parametrize("warm", [True, False])
def test_missing_psutil_is_found_before_the_child_starts(scene, phantom_file, private_tmp, monkeypatch, warm):
    launched = []
    monkeypatch.setattr(process, "_launch", lambda *a, **k: launched.append(a))
    monkeypatch.setattr(worker_module, "_launchWorker", lambda *a, **k: launched.append(a))
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    volume = nodes.readVolume(scene, phantom_file, "phantom")
    with pytest.raises(RuntimeError, match="psutil is missing"):
        SkullVAELogic(warmWorker=warm).process(volume)
    assert launched == [] and list(private_tmp.iterdir()) == []
