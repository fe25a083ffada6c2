"""The workflow layer and the one-owner rules of issue 13: resample mode recorded and reused,
one γ rule, one device rule, one CUDA-OOM fallback."""

from __future__ import annotations

import pytest
import torch

from SkullVAELib.bundle.model_bundle import ModelBundle, new_bundle
from SkullVAELib.cli import main
from SkullVAELib.core.config import GAMMA_RANGE, PRESETS, CompletionConfig, TrainConfig, check_gamma
from SkullVAELib.core.devices import resolve_device
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import read_skull
from SkullVAELib.pipeline.settings import CompletionSettings
from SkullVAELib.vae import completion as completion_module
from SkullVAELib.workflows import complete_files, make_phantom_set, train_model

SHAPE, SPACING = (48, 48, 40), (4.4, 4.4, 4.4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf") / "data"
    make_phantom_set(3, root, seed=0, shape=SHAPE, spacing=SPACING, with_defects=True)
    return root


@pytest.fixture(scope="module")
def nearest_model(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "model"
    stages = {s: TrainConfig(stage=s, epochs=1, batch_size=2, device="cpu", beta=0.01) for s in (1, 2)}
    cache = out.parent / "cache"
    bundle = train_model([data], out, PRESETS["test"], stages, cache_dir=cache, resample="nearest")
    return out, bundle


def test_train_records_the_resample_mode_and_draws_the_curves(nearest_model):
    out, bundle = nearest_model
    assert bundle.resample == "nearest" and bundle.kind == "aggregated"
    assert ModelBundle.load(out).resample == "nearest"
    assert (out / "curves.png").stat().st_size > 1000  # drawn by the workflow, not the trainer


def test_stage2_alone_keeps_the_stage1_mode_and_refuses_another(data, nearest_model):
    out, _ = nearest_model
    cfg = {2: TrainConfig(stage=2, epochs=1, batch_size=2, device="cpu")}
    cache = out.parent / "cache"
    assert train_model([data], out, None, cfg, cache_dir=cache, overwrite=True).resample == "nearest"
    with pytest.raises(SkullVAEError, match="stage 2 must match"):
        train_model([data], out, None, cfg, cache_dir=cache, resample="area", overwrite=True)


def test_completion_uses_the_bundle_mode_unless_asked(data, nearest_model, monkeypatch):
    out, bundle = nearest_model
    seen = []
    real = completion_module.to_model_grid
    monkeypatch.setattr(completion_module, "to_model_grid", lambda s, g, mode: seen.append(mode) or real(s, g, mode))
    skull = read_skull(data / "defective_skull" / "phantom_002.nrrd")
    completion_module.complete(skull, bundle, CompletionConfig(gamma=0.0), device="cpu")
    completion_module.complete(skull, bundle, CompletionConfig(gamma=0.0, resample="area"), device="cpu")
    old = new_bundle(PRESETS["test"], seed=0)  # a bundle that predates the record
    assert old.resample == "area"
    completion_module.complete(skull, old, CompletionConfig(gamma=0.0), device="cpu")
    assert seen == ["nearest", "area", "area"]


def test_one_gamma_rule_everywhere(data, nearest_model, tmp_path, capsys):
    low, high = GAMMA_RANGE
    assert check_gamma(low) == low and check_gamma(high) == high
    for bad in (-0.1, high + 0.5, float("nan"), float("inf"), "x"):
        with pytest.raises(SkullVAEError, match="gamma"):
            check_gamma(bad)
    with pytest.raises(SkullVAEError, match="gamma"):
        CompletionConfig(gamma=2.5)
    out, _ = nearest_model
    source = data / "defective_skull" / "phantom_002.nrrd"
    code = main(["complete", "--model", str(out), "--input", str(source), "--output", str(tmp_path / "r.seg.nrrd"),
                 "--gamma", "0,2.5", "--progress", "none"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gamma" in err[0] and "0..2" in err[0]
    assert not any(tmp_path.iterdir())
    with pytest.raises(SkullVAEError, match="gamma"):
        complete_files(CompletionSettings(model=out), source, tmp_path / "r.seg.nrrd", [3.0])


def test_one_device_rule():
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device(" CPU ").type == "cpu"
    for bad in ("tpu", "cuda:99", "nonsense:1"):
        with pytest.raises(SkullVAEError, match="device"):
            resolve_device(bad)


def test_cuda_out_of_memory_falls_back_to_the_cpu_once(data, nearest_model, monkeypatch):
    _, bundle = nearest_model
    real, calls, messages = completion_module._encode_decode, [], []

    def flaky(bundle, occupancy, cfg, device, *args):
        calls.append(device.type)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(bundle, occupancy, cfg, device, *args)

    monkeypatch.setattr(completion_module, "_encode_decode", flaky)
    skull = read_skull(data / "defective_skull" / "phantom_002.nrrd")
    result = completion_module.complete(
        skull, bundle, CompletionConfig(gamma=0.0), device="cpu", progress=lambda s, f, m="": messages.append(m)
    )
    assert calls == ["cpu", "cpu"] and result.completed.shape == skull.shape
    assert any("out of memory" in m for m in messages)


def test_cache_takes_train_grid_options_and_the_resampling(data, tmp_path, capsys):
    assert main(["cache", "--data", str(data), "--preset", "test", "--cache-dir", str(tmp_path / "c"),
                 "--progress", "none"]) == 0  # fmt: skip
    assert "at 32x32x32 (area)" in capsys.readouterr().out
    assert main(["cache", "--data", str(data), "--grid", "16,16,8", "--resample", "nearest",
                 "--cache-dir", str(tmp_path / "c"), "--progress", "none"]) == 0  # fmt: skip
    assert "at 16x16x8 (nearest)" in capsys.readouterr().out


def test_fit_completion_keeps_the_models_resampling(data, nearest_model, capsys):
    out, _ = nearest_model
    code = main(["fit-completion", "--model", str(out), "--data", str(data),
                 "--cache-dir", str(out.parent / "cache"), "--progress", "none"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "|DEV_cranial|" in captured.out and (out / "completion.json").is_file()
    assert ModelBundle.load(out).resample == "nearest"


def test_the_demo_workflow_rejects_too_few_subjects(tmp_path):
    from SkullVAELib.workflows import demo

    with pytest.raises(SkullVAEError, match="at least 3"):
        demo(tmp_path / "d", n=2)
    assert not (tmp_path / "d").exists()


def test_set_threads_bounds_torch_itk_and_the_blas_pools():
    """A batch worker's share of the cores holds for every pool it computes with."""
    import subprocess
    import sys

    script = (
        "import sys, SimpleITK as sitk, threadpoolctl, numpy\n"
        "from SkullVAELib.workflows.complete import set_threads\n"
        "set_threads(1)\n"
        "loaded = 'torch' in sys.modules\n"  # never imported for the rim fit's sake
        "import torch\n"  # a learned source imports it later: it starts with the same bound
        "pools = [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
        "print(loaded, torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), max(pools))\n"
    )  # a child process: the limits are process-wide
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "1", "1", "1"]


def test_set_threads_zero_leaves_the_libraries_defaults(monkeypatch):
    """`--threads 0` (``threads_arg``: 0 = the library's default) is accepted, and changes nothing."""
    import os

    from SkullVAELib.cli.common import threads_arg
    from SkullVAELib.workflows.complete import set_threads

    monkeypatch.delenv("SKULLVAE_THREADS", raising=False)
    before = torch.get_num_threads()
    assert threads_arg("0") == 0
    set_threads(0)
    assert torch.get_num_threads() == before and "SKULLVAE_THREADS" not in os.environ
    with pytest.raises(SkullVAEError, match="--threads must be >= 1"):
        set_threads(-1)


def test_the_warm_completer_sees_an_atlas_added_or_rebuilt_in_the_model_folder(tiny_model, tmp_path):
    """MODEL/atlas/ is part of the model: adding it, or rebuilding one of its files in place, loads the
    model afresh (the worker once kept a Completer that did not know the atlas was there)."""
    import json
    import os
    import shutil

    from SkullVAELib.workflows.complete import warm_completer

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    settings = CompletionSettings(model=model)
    first = warm_completer(settings)
    assert warm_completer(settings) is first and not first.folder.has_atlas
    (model / "atlas").mkdir()
    (model / "atlas" / "atlas.json").write_text(json.dumps({"cases": []}))
    second = warm_completer(settings)
    assert second is not first and second.folder.has_atlas
    member = model / "atlas" / "000.nrrd"
    member.write_bytes(b"a member")
    third = warm_completer(settings)
    assert third is not second
    stat = member.stat()
    os.utime(member, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rebuilt in place: a newer file
    assert warm_completer(settings) is not third
