"""The learned cranial residual on the command line: `train-residual` (pools, training, refusals)
and `complete` with MODEL/residual.safetensors (tried first, falls back to the rim fit with --sources)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SkullVAELib.cli import main
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.residual.config import ResidualConfig, load_residual, save_residual
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (96, 96, 72), (2.2, 2.2, 2.2)
TINY = ["--spacing", "6", "--crop", "24,24,24", "--channels", "4,8"]
TINY_CFG = ResidualConfig(spacing_mm=6.0, crop_shape=(24, 24, 24), channels=(4, 8))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A data set of two phantoms (complete skull, a real defect and its implant) and a model
    folder with a residual that grows every implant (its output head's bias is large)."""
    root = tmp_path_factory.mktemp("cli_residual")
    for seed in (1, 2):
        complete = make_phantom(seed, SHAPE, SPACING)
        defective, implant = cranial_defect(complete, seed, style="skullbreak")
        for folder, image in (("complete_skull", complete), ("defective_skull", defective), ("implant", implant)):
            (root / "data" / folder).mkdir(parents=True, exist_ok=True)
            write_mask(image, root / "data" / folder / f"{seed:03d}.nrrd")
    network = TINY_CFG.network()
    with torch.no_grad():
        network[-1].bias.fill_(50.0)
    (root / "model").mkdir()
    save_residual(root / "model" / "residual.safetensors", network, TINY_CFG, {"train_ids": ["001"]})
    defective, truth = cranial_defect(make_phantom(7, SHAPE, SPACING), 3, style="skullbreak")
    write_mask(defective, root / "defective.nrrd")
    return root, defective


def test_train_residual_makes_pools_trains_and_refuses_to_overwrite(data, tmp_path, capsys):
    root, _ = data
    out = tmp_path / "res"
    argv = ["train-residual", "--data", str(root / "data"), "--train-ids", "001", "--val-ids", "002"]
    argv += ["--out", str(out), "--steps", "2", "--val-every", "1", "--progress", "none", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "pool-train.npz").is_file() and (out / "pool-val.npz").is_file()
    _, cfg, info = load_residual(out / "residual.safetensors")
    assert cfg.crop_shape == (24, 24, 24) and info["train_ids"] == ["001"] and info["steps"] == 2
    assert info["train"]["augment"] is True  # validation chose the warped crops: on by default
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "exists" in err and len(err.splitlines()) == 1
    again = ["train-residual", "--out", str(tmp_path / "again"), "--pools", str(out / "pool-train.npz")]
    flags = ["--test-time-mirror", "--no-augment", "--lr-schedule", "cosine", "--seed", "5", *TINY]
    assert main([*again, "--steps", "1", "--progress", "none", *flags]) == 0
    _, cfg, info = load_residual(tmp_path / "again" / "residual.safetensors")
    assert cfg.test_time_mirror and info["train"]["augment"] is False and info["train"]["lr_schedule"] == "cosine"
    assert info["train"]["seed"] == 5
    assert main([*again, "--steps", "1", "--progress", "none", "--overwrite"]) == 2  # 6 mm pools, 2 mm default
    assert "made for 6 mm crops" in capsys.readouterr().err


def test_complete_tries_the_residual_first_and_the_quality_gate_guards_it(data, run_complete):
    root, defective = data
    done, segments, _ = run_complete(root, "residual", "cranial", "--no-quality")
    assert done["implant_source"] == "residual"
    plain, plain_segments, _ = run_complete(root, "plain", "cranial", "--sources", "rimfit")
    assert plain["implant_source"] == "rimfit"
    implant = segments["Implant"]
    assert implant.shape == defective.shape and not (implant & defective.mask).any()
    assert np.count_nonzero(implant) > np.count_nonzero(plain_segments["Implant"])
    assert np.array_equal(segments["Patient bone"], defective.mask)  # the patient's bone is unchanged
    # this residual thickens the whole implant by 6 mm: the quality score rejects it for the rim fit
    guarded, guarded_segments, _ = run_complete(root, "guarded", "cranial")
    assert guarded["implant_source"] == "rimfit" and "quality" in guarded["skipped_sources"]["residual"]
    assert np.array_equal(guarded_segments["Implant"], plain_segments["Implant"])


def test_pools_made_by_two_workers_equal_those_made_in_turn(data, tmp_path):
    """--jobs changes who makes the samples, never which samples or their order."""
    from SkullVAELib.implant.residual.pool import load_pools
    from SkullVAELib.workflows.residual import build_residual_pool

    root, _ = data
    pools = {}
    for jobs in (1, 2):
        path = tmp_path / f"pool{jobs}.npz"
        build_residual_pool(root / "data", ["001", "002"], path, cfg=TINY_CFG, draws=2, jobs=jobs)
        pools[jobs] = load_pools([path], TINY_CFG)
    assert len(pools[1]["ids"]) >= 4 and list(pools[1]["ids"]) == list(pools[2]["ids"])
    assert list(pools[1]["kinds"]) == list(pools[2]["kinds"])
    for key in ("inputs", "target", "ignore"):
        assert np.array_equal(pools[1][key], pools[2][key])


def test_train_residual_refuses_zero_jobs(data, tmp_path, capsys):
    root, _ = data
    argv = ["train-residual", "--data", str(root / "data"), "--train-ids", "001", "--out", str(tmp_path / "o")]
    assert main([*argv, "--jobs", "0", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--jobs" in err and "must be positive" in err and len(err.splitlines()) == 1


def test_pool_workers_are_bounded_by_the_memory_limit_before_any_work(data, tmp_path, default_limits):
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.core.limits import set_limits
    from SkullVAELib.workflows.batch_pool import case_memory_bytes
    from SkullVAELib.workflows.residual import build_residual_pool

    root, _ = data
    set_limits(max_memory_gb=1.5 * case_memory_bytes(root / "data" / "complete_skull" / "001.nrrd") / 1e9)  # one skull
    with pytest.raises(SkullVAEError, match="--jobs 2 would hold 2 ×"):
        build_residual_pool(root / "data", ["001", "002"], tmp_path / "p.npz", cfg=TINY_CFG, jobs=2)
    assert not (tmp_path / "p.npz").exists()


def test_extra_skulls_give_new_defects_with_their_own_hole_kept_out_of_the_loss(data, tmp_path):
    """A skull with a hole and no ground truth: new defects are cut away from the hole (fitted once)."""
    import shutil

    from SkullVAELib.implant.residual.pool import load_pools
    from SkullVAELib.workflows.residual import build_residual_pool, defective_ids

    root, _ = data
    (tmp_path / "extra" / "defective_skull").mkdir(parents=True)
    shutil.copy(root / "data" / "defective_skull" / "001.nrrd", tmp_path / "extra" / "defective_skull")
    (tmp_path / "extra" / "defective_skull" / ".hidden.nrrd").write_bytes(b"")  # not a case of the layout
    assert defective_ids(tmp_path / "extra") == ["001"]  # --extra without --extra-ids takes them all
    path = build_residual_pool(tmp_path / "extra", ["001"], tmp_path / "x.npz", ("extra",), TINY_CFG, draws=2,
                               id_prefix="extra-")  # fmt: skip
    pool = load_pools([path], TINY_CFG)
    assert 1 <= len(pool["ids"]) <= 2 and set(pool["ids"]) == {"extra-001"} and set(pool["kinds"]) == {"extra"}
    for target, ignore in zip(pool["target"], pool["ignore"], strict=True):
        assert ignore.any() and (target > 127).any()  # the old hole is ignored, the new defect is the target
        assert np.count_nonzero(ignore & (target > 127)) <= 0.02 * np.count_nonzero(target > 127)


def test_the_drawn_defects_take_every_style_in_turn(data, tmp_path):
    """By default a skull's draws take the three cranial styles in turn (irregular outlines too)."""
    from SkullVAELib.implant.residual.pool import load_pools
    from SkullVAELib.workflows.residual import build_residual_pool

    root, _ = data
    path = build_residual_pool(root / "data", ["001"], tmp_path / "p.npz", cfg=TINY_CFG, draws=3)
    assert set(load_pools([path], TINY_CFG)["kinds"]) == {"real", "skullfix", "skullbreak", "irregular"}
    only = build_residual_pool(root / "data", ["001"], tmp_path / "i.npz", ("irregular",), TINY_CFG, draws=2)
    assert set(load_pools([only], TINY_CFG)["kinds"]) == {"irregular"}


def test_new_defects_on_extra_skulls_take_the_styles_in_turn(data, monkeypatch):
    import SkullVAELib.data.defects as defects
    from SkullVAELib.implant.residual.pool import extra_samples
    from SkullVAELib.io.image import read_skull

    root, _ = data
    asked = []

    def recording(skull, seed, style="skullfix", **kw):
        asked.append(style)
        return cranial_defect(skull, seed, style=style, **kw)

    monkeypatch.setattr(defects, "cranial_defect", recording)
    skull = read_skull(root / "data" / "defective_skull" / "001.nrrd", kind="binary")
    list(extra_samples(skull, [11, 12, 13], TINY_CFG, tries=1, styles=("irregular", "skullbreak")))
    assert asked == ["irregular", "skullbreak", "irregular"]


@pytest.mark.parametrize("styles", ["box", "skullfix,round", ""])
def test_train_residual_refuses_unknown_styles(data, tmp_path, capsys, styles):
    root, _ = data
    argv = ["train-residual", "--data", str(root / "data"), "--train-ids", "001", "--out", str(tmp_path / "o")]
    assert main([*argv, "--styles", styles, "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--styles" in err and "irregular" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "pool-train.npz").exists()
