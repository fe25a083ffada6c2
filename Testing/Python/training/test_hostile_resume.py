"""Issue 25 §2 and §6: trainings that can always be resumed, fitted models that stay fitted, a full
disk while saving a checkpoint in one line.

- ``train --resume`` on a finished, fitted model deleted ``completion.json`` (``complete`` then
  refused the model): nothing is trained, so the model is kept as it is.
- A kill -9 while the first stage-2 checkpoint of a new training (``--overwrite``) was written left
  the older training's stage-2 checkpoint behind: every resume failed on its latents.
- A file-size limit while a checkpoint is written is one line, exit 2 (it was a traceback).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest

from SkullVAELib.bundle.model_bundle import ModelBundle
from SkullVAELib.cli import main
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import write_mask

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals and resource limits")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(4):
        write_mask(make_phantom(seed, shape=(64, 64, 48), spacing=None), folder / "complete_skull" / f"{seed:03d}.nrrd")
    return folder


def _argv(data_dir, model, *extra) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(model), "--preset", "test", "--stage", "all",
            "--batch", "2", "--device", "cpu", "--epochs", "1", "--epochs2", "2", "--progress", "none",
            "--cache-dir", str(data_dir.parent / "cache"), *extra]  # fmt: skip


def test_resume_of_a_finished_fitted_model_keeps_its_completion_data(data_dir, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(_argv(data_dir, model)) == 0
    bundle = ModelBundle.load(model)
    d = bundle.network.latent_size
    bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1)})  # what fit-completion stores
    bundle.save_completion(model)
    assert main(_argv(data_dir, model, "--resume")) == 0, capsys.readouterr().err
    assert (model / "completion.json").is_file()
    assert ModelBundle.load(model).centroids is not None  # complete still accepts the model
    assert "nothing left to train" in capsys.readouterr().out


KILL_AT_FIRST_STAGE2_SAVE = """
import os, signal, sys, torch
real = torch.save
def save(obj, f, *args, **kwargs):
    if obj.get("stage") == 2:  # the first stage-2 checkpoint: half written, then kill -9
        with open(f, "wb") as out:
            out.write(b"PK" + bytes(100))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *args, **kwargs)
torch.save = save
from SkullVAELib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_the_first_stage2_checkpoint_of_a_new_training_leaves_it_resumable(data_dir, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(_argv(data_dir, model)) == 0  # an older, finished training: its checkpoints/stage2.pt stays
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = _argv(data_dir, model, "--overwrite", "--seed", "1")
    done = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_STAGE2_SAVE, *argv], env=env, timeout=600)
    assert done.returncode == -signal.SIGKILL
    code = main(_argv(data_dir, model, "--seed", "1", "--resume"))
    assert code == 0, capsys.readouterr().err  # was: "the checkpoint was trained on latents ... sum 4.9, not 5.7"
    assert ModelBundle.load(model).info["seed"] == 1


FILE_SIZE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from SkullVAELib.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(data_dir, tmp_path):
    model = tmp_path / "model"
    assert main(_argv(data_dir, tmp_path / "warm")) == 0  # fills the model-grid cache first
    limit = 64 * 1024  # the log fits, a checkpoint (weights + Adam state) does not
    argv = _argv(data_dir, model)
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(limit), *argv], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "cannot write the checkpoint" in lines[0] and "stage1.pt" in lines[0]
    assert not any(p.name.startswith(".stage1.pt.") for p in (model / "checkpoints").iterdir())
    assert resource.getrlimit(resource.RLIMIT_FSIZE)  # the limit lived in the child only
