"""`skullvae build-atlas`, `complete` with MODEL/atlas (the atlas source, on by default) and `evaluate --atlas`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.cli import main
from SkullVAELib.core.config import PRESETS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_atlas")
    for seed in (1, 2, 3):
        (root / "data" / "complete_skull").mkdir(parents=True, exist_ok=True)
        write_mask(make_phantom(seed, SHAPE, SPACING), root / "data" / "complete_skull" / f"{seed:03d}.nrrd")
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(root / "model")
    defective, truth = facial_defect(make_phantom(7, SHAPE, SPACING), seed=0)
    write_mask(defective, root / "defective.nrrd")
    return root, defective, truth


def _with_atlas(root, capsys) -> None:
    """Build MODEL/atlas unless an earlier test of this module did (tests may run alone or on other workers)."""
    if not (root / "model" / "atlas" / "atlas.json").exists():
        assert main(["build-atlas", "--data", str(root / "data"), "--out", str(root / "model" / "atlas")]) == 0
        capsys.readouterr()


def test_build_atlas_into_the_bundle_then_refuse_to_overwrite(setup, capsys):
    root, _, _ = setup
    shutil.rmtree(root / "model" / "atlas", ignore_errors=True)  # a test before this one may have built it
    argv = ["build-atlas", "--data", str(root / "data"), "--out", str(root / "model" / "atlas"), "--progress", "none"]
    assert main([*argv, "--train-ids", "001-003"]) == 0
    assert "3 skulls" in capsys.readouterr().out
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "atlas" in err and len(err.splitlines()) == 1
    assert main([*argv, "--train-ids", "009"]) == 2  # an id the data set lacks
    assert "009" in capsys.readouterr().err


def test_complete_uses_the_bundle_atlas_for_a_facial_defect(setup, capsys, run_complete):
    root, defective, truth = setup
    _with_atlas(root, capsys)
    done, segments, _ = run_complete(root, "atlas", "facial")
    assert done["implant_source"] == "atlas"
    assert any(k.startswith("atlas_") for k in done["timings"])
    implant = segments["Implant"]
    assert not (implant & defective.mask).any() and dice(implant, truth.mask) >= 0.5
    plain, _, _ = run_complete(root, "plain", "facial", "--sources", "rimfit,learned,model")
    assert plain["implant_source"] != "atlas"  # the untrained model may propose nothing: "none"


def test_evaluate_refuses_an_atlas_that_holds_test_cases(setup, tmp_path, capsys):
    from SkullVAELib.workflows.implants import evaluate_implants

    root, _, _ = setup
    _with_atlas(root, capsys)
    with pytest.raises(SkullVAEError, match="atlas set holds"):
        evaluate_implants(
            [root / "data"], tmp_path / "rep", ["002"], ["atlas"], ["facial"], atlas=root / "model" / "atlas"
        )
    with pytest.raises(SkullVAEError, match="--atlas"):
        evaluate_implants([root / "data"], tmp_path / "rep", ["002"], ["atlas"], ["facial"])


def test_a_model_without_a_facial_centroid_still_gets_the_atlas_implant(setup, capsys, tmp_path):
    """The atlas implant needs no facial shift: a model trained on cranial defects only serves
    (γ is not used); without an atlas it is a one-line error that names what to install."""
    import json

    from SkullVAELib.io.segfile import read_segmentation

    root, defective, truth = setup
    atlas = root / "model" / "atlas"
    if not (atlas / "atlas.json").exists():
        assert main(["build-atlas", "--data", str(root / "data"), "--out", str(atlas), "--progress", "none"]) == 0
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": np.ones(8)})
    bundle.save(tmp_path / "cranial_only")
    capsys.readouterr()
    argv = ["complete", "--model", str(tmp_path / "cranial_only"), "--input", str(root / "defective.nrrd")]
    argv += ["--defect", "facial", "--progress", "json"]
    assert main([*argv, "--output", str(tmp_path / "a.seg.nrrd"), "--atlas", str(atlas)]) == 0
    out, err = capsys.readouterr()
    done = json.loads(out.splitlines()[-1])["result"]
    assert done["implant_source"] == "atlas" and done["gamma"] == 1.0 and not done["gamma_used"]
    stages = [json.loads(line)["stage"] for line in out.splitlines()]
    assert "atlas" in stages  # the atlas registrations report progress (minutes on a CPU)
    implant = read_segmentation(tmp_path / "a.seg.nrrd")[1]["Implant"]
    assert dice(implant, truth.mask) >= 0.5
    assert main([*argv, "--output", str(tmp_path / "b.seg.nrrd"), "--sources", "rimfit,learned,model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a facial defect needs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.seg.nrrd").exists()


def test_two_files_of_one_case_are_refused_not_one_dropped(tmp_path, capsys):
    """``001.nrrd`` beside ``001.nii.gz``: build-atlas would keep one of them unseen and make-defects
    cut both with the case's one seed (a data set the reader then refuses); both refuse in one line."""
    data = tmp_path / "data"
    for name, seed in (("001.nrrd", 1), ("001.nii.gz", 2)):
        write_mask(make_phantom(seed, (32, 32, 24), (6.4, 6.4, 6.4)), data / "complete_skull" / name)
    for argv in (
        ["build-atlas", "--data", str(data), "--out", str(tmp_path / "atlas")],
        ["make-defects", "--complete", str(data), "--kind", "cranial", "--out", str(data)],
    ):
        assert main([*argv, "--progress", "none"]) == 2
        err = capsys.readouterr().err.strip()
        assert "001.nii.gz and 001.nrrd" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "atlas").exists() and sorted(p.name for p in data.iterdir()) == ["complete_skull"]


def test_a_volume_too_small_to_register_is_one_line_naming_it(tmp_path, capsys):
    """A 12 mm volume in the atlas's data (no skull: 3 blocks of 4 mm along an axis) made SimpleITK's smoothing
    raise a traceback; it is a one-line error naming the file, and nothing is left behind."""
    from SkullVAELib.io.image import SkullImage

    data = tmp_path / "data"
    write_mask(make_phantom(1, (32, 32, 24), (6.4, 6.4, 6.4)), data / "complete_skull" / "001.nrrd")
    tiny = np.zeros((6, 6, 6), dtype=bool)
    tiny[2:4, 2:4, 2:4] = True
    write_mask(SkullImage(tiny, np.zeros(3), np.full(3, 2.0), np.eye(3), {}), data / "complete_skull" / "002.nrrd")
    argv = [
        "build-atlas",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "atlas"),
        "--spacing",
        "4",
        "--progress",
        "none",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "002.nrrd" in err and "too small to register" in err, err
    assert not (tmp_path / "atlas").exists()
