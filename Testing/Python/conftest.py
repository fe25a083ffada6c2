"""Shared pytest fixtures.

The real SkullFix cases live outside the repository (../shared/data/skullfix, or
$SKULLVAE_SKULLFIX); tests that need them are marked ``skullfix`` and skip cleanly
where the folder is absent, so the suite passes on a fresh machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _skullfix_candidates() -> list[Path]:
    env = os.environ.get("SKULLVAE_SKULLFIX")
    found = [Path(env)] if env else []
    found += [REPO_ROOT.parent / "shared" / "data" / "skullfix"]
    return found


@pytest.fixture(scope="session")
def skullfix_dir() -> Path:
    """The SkullFix folder (complete_skull/, defective_skull/, implant/), or skip."""
    for candidate in _skullfix_candidates():
        if (candidate / "complete_skull").is_dir():
            return candidate
    pytest.skip("SkullFix cases not found (../shared/data/skullfix or $SKULLVAE_SKULLFIX); real-data test skipped")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run on small grids; one thread keeps them deterministic and leaves the other core free."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def default_limits(monkeypatch):
    """SkullVAELib.core.limits at its documented defaults, whatever the environment or an earlier
    in-process CLI call (``--max-voxels`` sets an environment variable) left behind."""
    from SkullVAELib.core import limits

    monkeypatch.delenv(limits.ENV_MAX_VOXELS, raising=False)
    monkeypatch.delenv(limits.ENV_MAX_MEMORY_GB, raising=False)
    limits.reset_limits()
    yield
    limits.reset_limits()
    for name in (limits.ENV_MAX_VOXELS, limits.ENV_MAX_MEMORY_GB):
        os.environ.pop(name, None)


# --- Slicer-side fixtures (real slicer-core; only the tests that ask for them import it) ---
@pytest.fixture
def scene():
    """A core MRML scene with the logics the module needs (SkullVAESlicerLib.nodes)."""
    from SkullVAESlicerLib import nodes

    scene, logics = nodes.createCoreScene()
    scene._skullvae_logics = logics  # keep the logics alive with the scene
    yield scene
    scene.Clear(1)


@pytest.fixture
def logic():
    """The logic the panel and the console use (a warm worker), its worker killed afterwards."""
    from SkullVAESlicerLib.logic import SkullVAELogic

    instance = SkullVAELogic()
    yield instance
    instance.cleanup()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained aggregated bundle (preset "test") with centroids: enough to run completion."""
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import network_preset

    bundle = new_bundle(network_preset("test"), aggregated=True, seed=0)
    d = bundle.network.latent_size
    bundle.set_centroids({"complete": np.zeros(d), "cranial": np.full(d, 0.1), "facial": np.full(d, -0.1)})
    folder = tmp_path_factory.mktemp("model") / "tiny"
    bundle.save(folder)
    return folder


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory) -> Path:
    """A binary phantom skull NRRD, 48×48×40 voxels of 3.2 mm."""
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask

    path = tmp_path_factory.mktemp("phantom") / "phantom.nrrd"
    write_mask(make_phantom(0, shape=(48, 48, 40), spacing=(3.2, 3.2, 3.2)), path)
    return path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Route tempfile into an empty folder, so leftovers can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def run_complete(capsys):
    """``run_complete(root, name, defect, *extra)``: `skullvae complete` of ``root/defective.nrrd``
    with the bundle ``root/model`` into ``root/name/result.seg.nrrd``; asserts exit 0 and returns
    (the JSON result, the segments by name, stderr)."""
    import json

    from SkullVAELib.cli import main
    from SkullVAELib.io.segfile import read_segmentation

    def run(root: Path, name: str, defect: str, *extra: str):
        out = root / name / "result.seg.nrrd"
        argv = ["complete", "--model", root / "model", "--input", root / "defective.nrrd", "--output", out]
        code = main([*map(str, argv), "--defect", defect, "--progress", "json", *extra])
        stdout, stderr = capsys.readouterr()
        assert code == 0, stderr
        return json.loads(stdout.splitlines()[-1])["result"], read_segmentation(out)[1], stderr

    return run


def phantom_data(n: int = 8, grid=(32, 32, 32)) -> torch.Tensor:
    """``(n, 1, X, Y, Z)`` float16 soft occupancy of phantoms, as the cache holds them."""
    from SkullVAELib.data.grid import to_model_grid as _to_model_grid
    from SkullVAELib.data.phantoms import make_phantom as _make_phantom

    vols = [_to_model_grid(_make_phantom(seed, shape=(64, 64, 48), spacing=None), grid) for seed in range(n)]
    return torch.from_numpy(np.stack(vols))[:, None].to(torch.float16)


def cmake_set(path: Path, variable: str) -> list[str]:
    """Entries of ``set(VARIABLE ...)`` in a CMake file (comments dropped, ${MODULE_NAME} expanded)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    names = dict(re.findall(r"set\((\w+)\s+([^\s)]+)\s*\)", text))
    match = re.search(rf"set\({variable}\b(.*?)\)", text, re.S)
    assert match, f"{path.name}: set({variable} ...) not found"
    entries = match.group(1).split()
    return [re.sub(r"\$\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), e) for e in entries]


class RampNetwork(torch.nn.Module):
    """A stand-in network for the learned sources: its one output channel grows from -30 to 30 left to
    right across its input (x, the crop's left-right axis), odd about the centre, so it and its
    mirror cancel."""

    def forward(self, x):
        n = x.shape[2]
        ramp = torch.linspace(-30.0, 30.0, n).view(1, 1, n, 1, 1)
        return ramp.expand(x.shape[0], 1, *x.shape[2:]).clone()


@pytest.fixture
def ramp_network() -> torch.nn.Module:
    return RampNetwork()


def finishes(call, seconds: float = 20.0):
    """``call()``'s value (or its exception, raised again), run in a thread; fails the test instead of hanging
    the suite when it does not return within ``seconds`` (a FIFO read, a hostile archive)."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hangs"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def gloo_ranks(script: str, *args: str, timeout: float = 180.0, world_size: int = 2) -> list[tuple[int, str]]:
    """(exit code, stdout and stderr) of ``python script *args`` launched the torchrun way, one process per rank
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT on 127.0.0.1; one OpenMP thread each); ``{rank}`` in an
    argument becomes the process's rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}
        env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
        cmd = [sys.executable, script, *(a.replace("{rank}", str(rank)) for a in args)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
