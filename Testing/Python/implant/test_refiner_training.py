"""Training the learned facial refiner and `skullvae train-refiner` (issue 9, lever 4), on small
phantom grids: best-validated weights, refusals, the CLI's one-line errors, no SimpleITK needed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.learned.config import RefinerConfig, load_refiner
from SkullVAELib.implant.learned.infer import FacialRefiner
from SkullVAELib.implant.learned.train import RefinerTrainConfig
from SkullVAELib.io.image import SkullImage, write_mask
from SkullVAELib.training.log import read_log
from SkullVAELib.workflows.refiner import pack_refiner_grids, train_refiner

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
TINY = RefinerConfig(spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))
TRAIN_IDS, VAL_IDS = ["001", "002", "003"], ["004"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder with complete_skull/001..004.nrrd (phantoms 64×64×48 at 3.2 mm)."""
    root = tmp_path_factory.mktemp("refiner_data") / "data"
    (root / "complete_skull").mkdir(parents=True)
    for seed in (1, 2, 3, 4):
        write_mask(make_phantom(seed, SHAPE, SPACING), root / "complete_skull" / f"{seed:03d}.nrrd")
    return root


@pytest.fixture(scope="module")
def grids(data_dir):
    """The data folder's skulls packed on 4 mm refiner grids."""
    return pack_refiner_grids(data_dir, data_dir.parent / "grids.npz", spacing_mm=4.0)


@pytest.fixture(scope="module")
def trained(grids):
    """A tiny refiner trained for 60 steps (validated every 20) on 001-003, selected on 004."""
    previous = torch.get_num_threads()  # module fixtures run before conftest's one-thread fixture
    torch.set_num_threads(1)
    try:
        return train_refiner(
            grids, grids.parent / "trained", TRAIN_IDS, VAL_IDS, TINY, RefinerTrainConfig(steps=60, val_every=20)
        )
    finally:
        torch.set_num_threads(previous)


# --- training ---------------------------------------------------------------------------------
def test_training_writes_the_best_validated_refiner_and_its_log(trained):
    out = trained.parent
    assert trained.name == "refiner.safetensors"
    assert (out / "refiner_curves.png").stat().st_size > 0 and (out / "checkpoints" / "refiner.pt").is_file()
    _, cfg, info = load_refiner(trained)
    assert cfg == TINY
    assert info["train_ids"] == TRAIN_IDS and info["val_ids"] == VAL_IDS and info["steps"] == 60
    assert "interrupted" not in info
    rows = read_log(out / "training_log.csv")  # the VAE's log: one row per validation round
    assert [(r["stage"], r["epoch"], r["step"]) for r in rows] == [(3, 1, 20), (3, 2, 40), (3, 3, 60)]
    dice_values = [r["val_dice"] for r in rows]
    assert info["best_val_dice"] == pytest.approx(max(dice_values))
    best = rows[dice_values.index(max(dice_values))]
    assert best["step"] == info["best_step"] and rows[-1]["best_epoch"] == best["epoch"]
    losses = [r["loss"] for r in rows]
    assert losses[-1] < losses[0]  # the network learns (the validation Dice is too noisy to test here)


def test_training_refuses_shared_ids_and_an_existing_refiner(grids, trained, tmp_path):
    with pytest.raises(SkullVAEError, match="both the training and validation"):
        train_refiner(grids, tmp_path / "shared", ["001", "002"], ["002"], TINY)
    assert not (tmp_path / "shared").exists()
    with pytest.raises(SkullVAEError, match="--overwrite"):
        train_refiner(grids, trained.parent, TRAIN_IDS, VAL_IDS, TINY)
    with pytest.raises(SkullVAEError, match="no skull 009"):
        train_refiner(grids, tmp_path / "absent", ["009"], [], TINY)
    with pytest.raises(SkullVAEError, match="4 mm"):
        train_refiner(
            grids, tmp_path / "spacing", ["001"], [], RefinerConfig(crop_shape=(32, 32, 32), channels=(4, 8, 16))
        )
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "refiner.safetensors").write_bytes(trained.read_bytes())
    before = (copy / "refiner.safetensors").read_bytes()
    train_refiner(grids, copy, ["002"], ["003"], TINY, RefinerTrainConfig(steps=2, val_every=1, seed=1), overwrite=True)
    assert (copy / "refiner.safetensors").read_bytes() != before
    assert load_refiner(copy / "refiner.safetensors")[2]["train_ids"] == ["002"]


def test_training_without_validation_skulls_keeps_the_last_weights(grids, tmp_path):
    path = train_refiner(grids, tmp_path / "noval", ["001"], [], TINY, RefinerTrainConfig(steps=4, val_every=2))
    info = load_refiner(path)[2]
    assert info["steps"] == 4
    assert info["best_step"] == 4  # without validation the last weights are kept, not the first
    with pytest.raises(SkullVAEError, match="at least one training skull"):
        train_refiner(grids, tmp_path / "none", [], ["001"], TINY)


def test_a_facial_refiner_loads_from_its_file_and_runs(trained):
    skull = make_phantom(8, SHAPE, SPACING)
    a = np.deg2rad(20.0)  # an oblique patient grid
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    oblique_facial_case = facial_defect(SkullImage(skull.mask, skull.origin, skull.spacing, rotation), seed=0)[0]
    refiner = FacialRefiner.load(trained)
    assert refiner.cfg == TINY and refiner.info["val_ids"] == VAL_IDS and not refiner.network.training
    result = refiner(oblique_facial_case)
    assert result.implant.shape == oblique_facial_case.shape
    assert not (result.implant & oblique_facial_case.mask).any()
    assert np.isfinite(result.probability).all()


# --- CLI --------------------------------------------------------------------------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("skullvae train-refiner: error:")
    return err


def test_train_refiner_names_a_missing_grid_file(tmp_path, capsys):
    missing = tmp_path / "MISSING.npz"
    argv = ["train-refiner", "--grids", str(missing), "--out", str(tmp_path / "X"), "--train-ids", "000"]
    assert main(argv) == 2
    assert "MISSING.npz" in one_line_error(capsys)
    assert not (tmp_path / "X" / "refiner.safetensors").exists()


def test_train_refiner_refuses_bad_numbers_and_an_existing_pack(data_dir, tmp_path, capsys):
    argv = ["train-refiner", "--grids", str(tmp_path / "g.npz"), "--out", str(tmp_path / "X"), "--train-ids", "001"]
    for bad in (["--steps", "0"], ["--val-every", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--checkpoint-minutes", "0"]):
        assert main([*argv, *bad]) == 2
        assert "must be positive" in one_line_error(capsys)
    assert main([*argv, "--crop", "32,x,32"]) == 2
    assert "--crop must be comma-separated integers" in one_line_error(capsys)
    packed = tmp_path / "packed.npz"
    pack = ["train-refiner", "--data", str(data_dir), "--out", str(packed), "--pack-only", "--progress", "none"]
    assert main([*pack, "--train-ids", "001-002", "--val-ids", "003"]) == 0
    assert "3 skulls" in capsys.readouterr().out
    from SkullVAELib.implant.learned.data import load_lps_grids

    skulls, spacing = load_lps_grids(packed)
    assert sorted(skulls) == ["001", "002", "003"] and spacing == 1.0
    before = packed.read_bytes()
    assert main([*pack, "--train-ids", "001"]) == 2
    err = one_line_error(capsys)
    assert "--overwrite" in err and "packed.npz" in err
    assert packed.read_bytes() == before
    assert main([*pack, "--train-ids", "001", "--overwrite"]) == 0
    assert sorted(load_lps_grids(packed)[0]) == ["001"]


def test_train_refiner_trains_from_packed_grids_then_refuses_to_overwrite(data_dir, tmp_path, capsys):
    """A 1 mm pack (the CLI's spacing) trained for two steps; the tiny crop and channels from the
    flags, and the test-time settings stored in the weights."""
    packed = tmp_path / "g1.npz"
    pack_refiner_grids(data_dir, packed, ids=["001", "002"])
    argv = ["train-refiner", "--grids", str(packed), "--out", str(tmp_path / "out"), "--train-ids", "001"]
    argv += ["--val-ids", "002", "--steps", "2", "--val-every", "1", "--crop", "32,32,32", "--channels", "4,8,16"]
    argv += ["--test-time-mirror", "--test-time-shifts", "2"]
    assert main(argv) == 0
    assert "refiner.safetensors" in capsys.readouterr().out
    _, cfg, info = load_refiner(tmp_path / "out" / "refiner.safetensors")
    assert cfg.crop_shape == (32, 32, 32) and cfg.channels == (4, 8, 16) and cfg.spacing_mm == 1.0
    assert cfg.test_time_mirror and cfg.test_time_shifts == 2
    assert info["train_ids"] == ["001"] and info["val_ids"] == ["002"] and info["train"]["steps"] == 2
    assert main(argv) == 2
    assert "--overwrite" in one_line_error(capsys)


def test_train_refiner_seed_is_stored_and_changes_the_weights(grids, tmp_path, capsys):
    """``--seed`` reaches the run (recorded in the weights' info) and a second seed trains other weights;
    a seed that is not a non-negative integer is refused in one line."""
    argv = ["train-refiner", "--grids", str(grids), "--train-ids", "001-002", "--val-ids", "003", "--spacing", "4"]
    argv += ["--crop", "32,32,32", "--channels", "4,8,16", "--steps", "2", "--val-every", "1", "--progress", "none"]
    weights = {}
    for seed in (0, 7):
        assert main([*argv, "--out", str(tmp_path / f"s{seed}"), "--seed", str(seed)]) == 0, capsys.readouterr().err
        network, _, info = load_refiner(tmp_path / f"s{seed}" / "refiner.safetensors")
        assert info["train"]["seed"] == seed
        weights[seed] = torch.cat([p.detach().flatten() for p in network.parameters()])
    assert not torch.equal(weights[0], weights[7])
    with pytest.raises(SystemExit) as refused:  # argparse refuses it before anything runs
        main([*argv, "--out", str(tmp_path / "bad"), "--seed", "-1"])
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()
    assert "--seed" in one_line_error(capsys)


def test_the_trainer_runs_on_a_machine_without_simpleitk(grids, tmp_path):
    """A GPU machine may have torch alone: `train-refiner --grids` must not import SimpleITK."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['SimpleITK'] = None\n"  # any import of SimpleITK now fails
        "from SkullVAELib.cli import main\n"
        f"sys.exit(main(['train-refiner', '--grids', {str(grids)!r}, '--out', {str(tmp_path / 'out')!r}, "
        "'--train-ids', '001-002', '--val-ids', '003', '--spacing', '4', '--crop', '32,32,32', "
        "'--channels', '4,8,16', '--steps', '2', '--val-every', '1', '--progress', 'none']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "refiner.safetensors").is_file()


def test_extra_skulls_with_a_cranial_defect_join_the_training_faces(data_dir, tmp_path, capsys):
    """Issue 24 §3: skulls that have only a defective version (an intact face) are packed with
    ``extra-`` ids and always trained on, never validated on."""
    from SkullVAELib.data.defects import cranial_defect

    extra = tmp_path / "extra" / "defective_skull"
    extra.mkdir(parents=True)
    defective, _ = cranial_defect(make_phantom(9, SHAPE, SPACING), 0, style="skullbreak")
    write_mask(defective, extra / "000.nrrd")
    out = tmp_path / "out"
    argv = ["train-refiner", "--data", str(data_dir), "--extra", str(extra.parent), "--out", str(out)]
    argv += ["--train-ids", "001", "--val-ids", "002", "--steps", "2", "--val-every", "1", "--progress", "none"]
    argv += ["--spacing", "4", "--crop", "32,32,32", "--channels", "4,8,16"]
    assert main(argv) == 0, capsys.readouterr().err
    _, _, info = load_refiner(out / "refiner.safetensors")
    assert info["train_ids"] == ["001", "extra-000"] and info["val_ids"] == ["002"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv[:4], str(empty), *argv[5:], "--overwrite"]) == 2
    assert "no skull images" in one_line_error(capsys)


def test_packed_extras_train_from_the_packed_file_alone(data_dir, tmp_path, capsys):
    """A GPU machine has the packed grids but not the extra skulls' folder: ``--packed-extras`` takes
    the ``extra-`` skulls from the file; a file packed without them, or no ``--grids``, is refused."""
    from SkullVAELib.data.defects import cranial_defect

    extra = tmp_path / "extra" / "defective_skull"
    extra.mkdir(parents=True)
    defective, _ = cranial_defect(make_phantom(9, SHAPE, SPACING), 0, style="skullbreak")
    write_mask(defective, extra / "000.nrrd")
    packed, plain = tmp_path / "x.npz", tmp_path / "plain.npz"
    pack_refiner_grids(data_dir, packed, ids=["001", "002"], spacing_mm=4.0, extra=extra.parent)
    pack_refiner_grids(data_dir, plain, ids=["001", "002"], spacing_mm=4.0)
    shutil.rmtree(extra.parent)  # as on the GPU machine
    out = tmp_path / "out"
    argv = ["train-refiner", "--grids", str(packed), "--packed-extras", "--out", str(out), "--train-ids", "001"]
    argv += ["--val-ids", "002", "--steps", "2", "--val-every", "1", "--progress", "none"]
    argv += ["--spacing", "4", "--crop", "32,32,32", "--channels", "4,8,16"]
    assert main(argv) == 0, capsys.readouterr().err
    _, _, info = load_refiner(out / "refiner.safetensors")
    assert info["train_ids"] == ["001", "extra-000"] and info["val_ids"] == ["002"]
    assert main([*argv[:2], str(plain), *argv[3:], "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert "plain.npz" in err and "no extra skulls" in err
    assert main(["train-refiner", "--data", str(data_dir), *argv[3:], "--overwrite"]) == 2
    assert "--packed-extras needs --grids" in one_line_error(capsys)
