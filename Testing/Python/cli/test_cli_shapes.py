"""`skullvae build-shapes`, and `complete` with MODEL/shapes.safetensors (the rim fit's shape cue)."""

from __future__ import annotations

import pytest

from SkullVAELib.bundle.folder import SHAPES_FILE
from SkullVAELib.cli import main
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.shapebank import load_shape_bank
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_shapes")
    (root / "data" / "complete_skull").mkdir(parents=True)
    for seed in (1, 2, 3):
        write_mask(make_phantom(seed, SHAPE, SPACING), root / "data" / "complete_skull" / f"{seed:03d}.nrrd")
    return root


def test_build_shapes_writes_the_bank_and_refuses_to_replace_it(data, capsys):
    model = data / "model"
    argv = ["build-shapes", "--data", str(data / "data"), "--out", str(model), "--progress", "none"]
    assert main([*argv, "--train-ids", "001-002"]) == 0
    assert "2 skulls" in capsys.readouterr().out
    assert load_shape_bank(model / SHAPES_FILE).ids == ("001", "002")
    before = (model / SHAPES_FILE).read_bytes()
    assert main(argv) == 2  # a bank is there: refused in one line, the file untouched
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and SHAPES_FILE in err and len(err.splitlines()) == 1
    assert (model / SHAPES_FILE).read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    assert load_shape_bank(model / SHAPES_FILE).ids == ("001", "002", "003")
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--train-ids", "009"]) == 2  # an id the data set lacks
    assert "009" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == [SHAPES_FILE]  # nothing half-written


def test_build_shapes_refuses_a_folder_without_skulls(tmp_path, capsys):
    assert main(["build-shapes", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(tmp_path) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()
