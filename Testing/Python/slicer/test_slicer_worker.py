"""The warm worker of the Slicer logic (issue 26 §4) and the library's words in Slicer (issue 22 §5,
issue 23 §5), against the real slicer-core wheel: a second Apply reuses the worker, Cancel kills its
process tree and the next Apply starts a new one, a dead worker is found and replaced, another
Python or new packages or models start a new one, cleanup leaves nothing; the implant sources,
mirror and finishing reach the child's command, and a gap of 3 mm really separates the implant
from the patient's bone in the segments Slicer shows."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_workers (also when `import slicer` loads us)

from SkullVAESlicerLib import nodes, results  # noqa: E402
from SkullVAESlicerLib import process as process_module  # noqa: E402
from SkullVAESlicerLib import worker as worker_module  # noqa: E402
from SkullVAESlicerLib.logic import SkullVAECancelled  # noqa: E402
from SkullVAESlicerLib.process import (  # noqa: E402
    buildCompleteArguments,
    buildCompleteCommand,
    buildWorkerCommand,
    childEnvironment,
    parseLine,
)
from slicer_workers import dead, install_fake_worker, worker_leftovers  # noqa: E402

# fixtures scene, phantom_file, private_tmp: conftest.py

GAP_MM = 3.0


@pytest.fixture(scope="module")
def defect_case(tmp_path_factory):
    """A phantom with a cranial defect on a small anisotropic grid (80×80×60 voxels of 2.4×2.4×3 mm)."""
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask

    defective, _ = cranial_defect(make_phantom(1, (80, 80, 60), (2.4, 2.4, 3.0)), 1, style="skullbreak")
    path = tmp_path_factory.mktemp("gap") / "defective.nrrd"
    write_mask(defective, path)
    return path


def _ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _gap_mm(seg) -> float:
    """The smallest distance (mm) from an implant voxel to the patient bone, both read from the segments."""
    from scipy import ndimage

    segmentation = seg.GetSegmentation()
    bone, image = results._mask(segmentation, results.PATIENT_BONE)
    implant, _ = results._mask(segmentation, results.IMPLANT, like=image)
    assert bone.any() and implant.any()
    spacing = tuple(reversed(image.GetSpacing()))  # the arrays are (K, J, I)
    return float(ndimage.distance_transform_edt(~bone, sampling=spacing)[implant].min())


# --- the library's words reach the child ----------------------------------------------------------
def test_sources_mirror_and_finishing_are_the_child_arguments():
    from SkullVAELib.cli import build_parser

    args = buildCompleteArguments(
        "in.nrrd", None, "out.seg.nrrd", sources=("atlas", "rimfit"), mirror=False, selfCheck=True, smoothMm=1.5,
        marginMm=GAP_MM, minThicknessMm=2,
    )  # fmt: skip
    assert args[args.index("--sources") + 1] == "atlas,rimfit" and "--no-mirror" in args
    parsed = build_parser(["complete", *args]).parse_args(["complete", *args])  # the child's own parser
    assert parsed.sources == ("atlas", "rimfit") and parsed.mirror is False and parsed.self_check is True
    assert (parsed.smooth_mm, parsed.margin_mm, parsed.min_thickness_mm) == (1.5, GAP_MM, 2.0)
    command = buildCompleteCommand("in.nrrd", None, "out.seg.nrrd", sources="model", python="py")
    assert command[0] == "py" and command[command.index("complete") + 1 :] == buildCompleteArguments(
        "in.nrrd", None, "out.seg.nrrd", sources="model"
    )
    default = buildCompleteArguments("in.nrrd", None, "out.seg.nrrd")
    assert default[default.index("--sources") + 1] == "residual,rimfit,learned,atlas,model" and "--mirror" in default
    assert default[default.index("--margin-mm") + 1] == "0.0"  # off, said explicitly
    assert "--self-check" not in default  # off unless asked: it costs seconds
    assert buildWorkerCommand("py")[0] == "py" and buildWorkerCommand("py")[-1] == "worker"
    labelled = buildCompleteArguments("in.nrrd", None, "out.seg.nrrd", labels=("1", "3"))  # a label map's skull
    assert build_parser(["complete", *labelled]).parse_args(["complete", *labelled]).segment == ["1", "3"]
    assert "--segment" not in default


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sources": ("rimfit", "refine")}, "unknown 'refine'"),
        ({"sources": ()}, "none given"),
        ({"sources": "rimfit,rimfit"}, "repeated"),
        ({"marginMm": -1}, "marginMm"),
        ({"smoothMm": float("nan")}, "smoothMm"),
        ({"minThicknessMm": "thick"}, "minThicknessMm"),
    ],
)
def test_bad_sources_or_finishing_are_refused_before_anything_starts(scene, phantom_file, private_tmp, options,
                                                                      message, logic):  # fmt: skip
    volume = nodes.readVolume(scene, phantom_file)
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=message):
        logic.process(volume, **options)
    assert scene.GetNumberOfNodes() == count and list(private_tmp.iterdir()) == [] and logic.workerPid is None


def test_the_library_refuses_finishing_beyond_its_bound(scene, phantom_file, private_tmp, logic):
    """The upper bound is the library's (``implant.finish.MAX_FINISH_MM``): the child's one-line error."""
    from SkullVAELib.implant.finish import MAX_FINISH_MM

    volume = nodes.readVolume(scene, phantom_file)
    with pytest.raises(ValueError, match="margin mm must be between 0 and"):
        logic.process(volume, defect="cranial", marginMm=MAX_FINISH_MM + 1)
    assert worker_leftovers(private_tmp, logic) == []


# --- the real worker: a second Apply, and a gap of 3 mm in the segments Slicer shows -------------------
def test_second_apply_reuses_the_worker_and_the_gap_separates_implant_and_bone(scene, defect_case, private_tmp,
                                                                                logic):  # fmt: skip
    volume = nodes.readVolume(scene, defect_case, "defective")
    first = logic.process(volume, defect="cranial")
    worker = logic.workerPid
    touching, volume0 = _gap_mm(first), results.segmentVolumeMm3(first, "Implant")
    assert worker is not None and touching < GAP_MM  # without a gap the implant touches the bone
    # into the same output node, as the panel does after its first Apply
    second = logic.process(
        volume, outputSegmentation=first, defect="cranial", marginMm=GAP_MM, smoothMm=0.5, minThicknessMm=1.0
    )
    assert second is first and second.GetSegmentation().GetNumberOfSegments() == 2
    assert logic.workerPid == worker and logic.worker.worker.requests == 2  # the same, warm process
    request = logic.lastArguments
    assert request[request.index("--margin-mm") + 1] == repr(GAP_MM)
    assert (
        request[request.index("--smooth-mm") + 1] == "0.5" and request[request.index("--min-thickness-mm") + 1] == "1.0"
    )
    assert logic.lastResult["implantSource"] == "rimfit"
    assert _gap_mm(second) > GAP_MM
    assert results.segmentVolumeMm3(second, "Implant") < volume0
    assert results.hasSurface(second, "Implant") and not results.hasSurface(second, "Patient bone")
    assert worker_leftovers(private_tmp, logic) == []
    logic.cleanup()
    assert dead(worker) and logic.workerPid is None and list(private_tmp.iterdir()) == []


def test_the_real_worker_ends_when_its_input_closes(private_tmp):
    """Slicer gone without cleanup: the worker reads the end of its stdin and exits 0 by itself."""
    worker = worker_module.Worker(buildWorkerCommand(), childEnvironment())
    assert worker.alive and worker.home.is_dir()
    worker.proc.stdin.close()
    assert worker.proc.wait(timeout=120) == 0
    assert not worker.alive
    worker.kill()
    assert list(private_tmp.iterdir()) == []


def test_worker_exit_lines_are_parsed():
    assert parseLine('{"stage": "exit", "code": 2}\n').code == 2
    assert parseLine('{"stage": "exit", "code": 0}').fraction is None
    assert parseLine('{"stage": "rimfit", "fraction": 0.5, "code": 3}').code is None


# --- cancel, failures, restarts (stand-in workers) -------------------------------------------------
SLEEPER_WORKER = """
import subprocess, time
p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
print(p.pid, flush=True)
time.sleep(120)
"""


def test_cancel_kills_the_worker_tree_and_the_next_apply_starts_a_new_one(
    scene, phantom_file, private_tmp, monkeypatch, logic
):
    install_fake_worker(monkeypatch, SLEEPER_WORKER)
    volume = nodes.readVolume(scene, phantom_file)
    before = _ids(scene)
    finished = []
    assert logic.process(volume, waitForCompletion=False, onFinished=lambda n, e: finished.append(e)) is None
    assert logic.isRunning and len(list(private_tmp.iterdir())) == 2  # the run's folder, the worker's
    worker = logic.workerPid
    deadline = time.monotonic() + 60
    while not logic._run.child.logLines and time.monotonic() < deadline:
        logic.poll()
        time.sleep(0.05)
    grandchild = int(logic._run.child.logLines[0])
    logic.cancel()
    while not logic.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(finished) == 1 and isinstance(finished[0], SkullVAECancelled)
    assert not logic.isRunning and logic.workerPid is None
    assert dead(grandchild) and dead(worker)
    assert _ids(scene) == before and list(private_tmp.iterdir()) == []  # the worker's folder went with it
    logic.process(volume, waitForCompletion=False)  # the next Apply: a new worker
    assert logic.workerPid not in (None, worker)
    logic.cancel()
    while not logic.poll() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_failing_worker_is_not_rerun(scene, phantom_file, private_tmp, monkeypatch, tmp_path, logic):
    """CUDA out of memory is handled once, inside the child (completion falls back to the CPU); a
    worker that still dies during a request is reported as a failure, not sent the request again."""
    starts = tmp_path / "starts.txt"
    body = "print('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB', flush=True); sys.exit(1)"
    install_fake_worker(monkeypatch, body, starts)
    volume = nodes.readVolume(scene, phantom_file)
    before = _ids(scene)
    with pytest.raises(RuntimeError, match="exit code 1.*CUDA out of memory"):
        logic.process(volume)
    assert starts.read_text().splitlines() == ["start"]
    assert logic.workerPid is None
    assert _ids(scene) == before and list(private_tmp.iterdir()) == []


FAKE_COMPLETE = """
import shutil
shutil.copyfile({result!r}, args[args.index("--output") + 1])
print(json.dumps({{"stage": "done", "fraction": 1.0, "message": "", "result": {{"implant_source": "rimfit"}}}}), flush=True)
"""


@pytest.fixture(scope="module")
def result_file(phantom_file, tmp_path_factory) -> Path:
    """A result as `skullvae complete` writes it, for the stand-in worker to copy."""
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation

    like = read_skull(phantom_file)
    implant = np.zeros_like(like.mask)
    implant[20:28, 20:28, 30:34] = True
    path = tmp_path_factory.mktemp("result") / "result.seg.nrrd"
    write_segmentation(path, like, [Segment("Patient bone", like.mask & ~implant), Segment("Implant", implant)])
    return path


def test_a_dead_worker_is_found_and_replaced(scene, phantom_file, result_file, private_tmp, monkeypatch, tmp_path,
                                             logic):  # fmt: skip
    starts = tmp_path / "starts.txt"
    install_fake_worker(monkeypatch, FAKE_COMPLETE.format(result=str(result_file)), starts)
    volume = nodes.readVolume(scene, phantom_file)
    logic.process(volume)
    first = logic.workerPid
    psutil.Process(first).kill()  # died between two Applies (killed, crashed, out of memory)
    psutil.Process(first).wait(timeout=30)
    lines = []
    logic.logCallback = lines.append
    logic.process(volume)
    assert logic.workerPid not in (None, first) and starts.read_text().splitlines() == ["start", "start"]
    assert any("had ended" in line for line in lines)
    assert worker_leftovers(private_tmp, logic) == []  # the dead worker's folder went


def test_a_request_the_worker_cannot_take_goes_once_to_a_new_one(monkeypatch, private_tmp):
    """The pipe to a worker broke (it ended just now): one new worker gets the request; if that one
    fails too, the run fails (no loop of restarts)."""
    failures = []

    def submit(self, args):
        if len(failures) < fail:
            failures.append(self.pid)
            raise worker_module.WorkerGone(f"the SkullVAE worker (pid {self.pid}) takes no more requests")
        return "job"

    monkeypatch.setattr(worker_module.Worker, "submit", submit)
    command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    holder = worker_module.WorkerHolder()
    fail = 1
    assert holder.submit(command, {}, ["--input", "x"]) == "job"
    assert len(failures) == 1 and dead(failures[0]) and holder.pid not in (None, failures[0])
    holder.stop()
    fail = 3
    with pytest.raises(worker_module.WorkerGone):
        holder.submit(command, {}, ["--input", "x"])
    assert len(failures) == 3 and all(dead(pid) for pid in failures)  # 1 + the first try and its one retry
    holder.stop()
    assert list(private_tmp.iterdir()) == []


def test_another_python_packages_or_models_start_a_new_worker(scene, phantom_file, result_file, private_tmp,
                                                              monkeypatch, tmp_path, logic):  # fmt: skip
    install_fake_worker(monkeypatch, FAKE_COMPLETE.format(result=str(result_file)))
    volume = nodes.readVolume(scene, phantom_file)
    pids = []
    for change in ("none", "python", "packages", "models", "none"):
        if change == "python":  # the settings' Python (e.g. another PythonSlicer)
            other = tmp_path / "python3"
            other.symlink_to(sys.executable)
            monkeypatch.setattr(process_module, "pythonExecutable", lambda other=str(other): other)
        elif change == "packages":  # Install dependencies installed something
            monkeypatch.setattr(
                "SkullVAESlicerLib.install.setupPythonRequirements",
                lambda askConfirmation=True, log=print: log("Installing monai>=1.3") or True,
            )
            assert logic.setupPythonRequirements(askConfirmation=False)
        elif change == "models":  # a model was removed (or installed): the loaded one may be gone
            monkeypatch.setattr("SkullVAELib.models.remove_model", lambda name: tmp_path / name)
            logic.removeModel("old-model")
        logic.process(volume)
        pids.append(logic.workerPid)
        assert all(dead(pid) for pid in pids if pid != pids[-1])
    assert len(set(pids)) == 4 and pids[-1] == pids[-2]  # each change: a new worker; no change: the same
    assert logic.worker.worker.command[0] == str(tmp_path / "python3")
    assert worker_leftovers(private_tmp, logic) == []


def test_cleanup_kills_the_worker_and_its_children(scene, phantom_file, private_tmp, monkeypatch, logic):
    body = """
    import subprocess
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(p.pid, flush=True)
    code = 3
    """
    install_fake_worker(monkeypatch, body)
    volume = nodes.readVolume(scene, phantom_file)
    lines = []
    logic.logCallback = lines.append
    with pytest.raises(RuntimeError, match="exit code 3"):
        logic.process(volume)
    worker = logic.workerPid
    grandchild = int(next(line for line in lines if line.strip().isdigit()))
    assert worker is not None and not dead(grandchild)  # a failed request leaves the worker warm
    logic.cleanup()
    assert dead(worker) and dead(grandchild) and logic.workerPid is None
    assert list(private_tmp.iterdir()) == []
    logic.cleanup()  # twice is harmless
