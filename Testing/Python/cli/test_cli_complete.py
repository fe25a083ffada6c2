"""`skullvae complete` and `skullvae fit-completion` end to end on phantoms, and their bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.bundle.model_bundle import ModelBundle, new_bundle
from SkullVAELib.cli import main
from SkullVAELib.core.config import PRESETS
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import write_mask
from SkullVAELib.io.segfile import read_segmentation

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = PRESETS["test"]
    bundle = new_bundle(cfg, aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(root / "model")
    new_bundle(cfg, seed=0).save(root / "bare")  # no centroids
    skull = make_phantom(5, shape=SHAPE, spacing=SPACING)
    defective, _ = cranial_defect(skull, seed=2)
    write_mask(defective, root / "defective.nrrd")
    return root, defective


def _run(capsys, *argv):
    code = main(["complete", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_complete_writes_a_segmentation_on_the_input_geometry(setup, capsys):
    root, defective = setup
    out = root / "r1" / "result.seg.nrrd"
    code, stdout, _ = _run(
        capsys,
        "--model",
        root / "model",
        "--input",
        root / "defective.nrrd",
        "--output",
        out,
        "--progress",
        "json",
        "--uncertainty",
        root / "r1" / "unc.nrrd",
        "--samples",
        "2",
    )
    assert code == 0
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert all({"stage", "fraction", "message"} <= set(rec) for rec in lines)
    done = lines[-1]
    assert done["stage"] == "done" and done["fraction"] == 1.0
    assert done["result"]["output"] == str(out)
    assert done["result"]["defect"] in ("cranial", "facial")
    assert {"model_encode", "model_decode", "read", "total"} <= set(done["result"]["timings"])
    geometry, segments = read_segmentation(out)
    assert set(segments) == {"Patient bone", "Implant"}
    assert geometry.same_geometry(defective)
    patient, implant = segments["Patient bone"], segments["Implant"]
    assert np.array_equal(patient, defective.mask)  # patient bone kept, as it was
    assert not (implant & defective.mask).any()  # the segments do not overlap
    unc = sitk.ReadImage(str(root / "r1" / "unc.nrrd"))
    assert unc.GetSize() == SHAPE and np.allclose(unc.GetSpacing(), SPACING)


def test_gamma_sweep_writes_one_result_per_value_and_a_montage(setup, capsys):
    root, _ = setup
    out = root / "sweep" / "result.seg.nrrd"
    code, _, err = _run(
        capsys,
        "--model",
        root / "model",
        "--input",
        root / "defective.nrrd",
        "--output",
        out,
        "--gamma",
        "0,0.5,1",
        "--defect",
        "cranial",
        "--progress",
        "none",
    )
    assert code == 0, err
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [
        "result_g0.00.seg.nrrd",
        "result_g0.00.seg.nrrd.run.json",  # each result names its run (io.runs)
        "result_g0.50.seg.nrrd",
        "result_g0.50.seg.nrrd.run.json",
        "result_g1.00.seg.nrrd",
        "result_g1.00.seg.nrrd.run.json",
        "result_gamma_sweep.png",
    ]


def _bad_2d(root):
    path = root / "slice.nrrd"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkUInt8), str(path))
    return path


def _mask_file(root, name, fill):
    path = root / name
    img = sitk.GetImageFromArray(np.full((20, 20, 20), fill, dtype=np.uint8))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("no_centroids", "fit-completion"),  # the model source without completion data
        ("gamma_text", "--gamma"),
        ("slice_2d", "slice.nrrd"),
        ("empty", "empty.nrrd"),
        ("all_bone", "full.nrrd"),
        ("not_a_bundle", "not a SkullVAE model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(setup, capsys, case, needle):
    root, _ = setup
    model, source, gamma = root / "model", root / "defective.nrrd", "1"
    if case == "no_centroids":
        model = root / "bare"
    elif case == "gamma_text":
        gamma = "one"
    elif case == "slice_2d":
        source = _bad_2d(root)
    elif case == "empty":
        source = _mask_file(root, "empty.nrrd", 0)
    elif case == "all_bone":
        source = _mask_file(root, "full.nrrd", 1)
    elif case == "not_a_bundle":
        model = root / "r_not_bundle"
        model.mkdir(exist_ok=True)
    out_dir = root / f"bad_{case}"
    extra = ["--sources", "model"] if case == "no_centroids" else []
    code, _, err = _run(
        capsys,
        *extra,
        "--model",
        model,
        "--input",
        source,
        "--output",
        out_dir / "r.seg.nrrd",
        "--implant-stl",
        out_dir / "i.stl",
        "--gamma",
        gamma,
        "--progress",
        "none",
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_gamma_zero_runs_without_centroids(setup, capsys):
    root, _ = setup
    out = root / "g0" / "r.seg.nrrd"
    code, _, err = _run(
        capsys,
        "--model",
        root / "bare",
        "--input",
        root / "defective.nrrd",
        "--output",
        out,
        "--gamma",
        "0",
        "--progress",
        "none",
    )
    assert code == 0, err
    assert out.is_file()


def test_fit_completion_stores_centroids(setup, tmp_path, capsys):
    root, _ = setup
    data = tmp_path / "data"
    for n in range(2):
        skull = make_phantom(10 + n, shape=SHAPE, spacing=SPACING)
        defective, implant = cranial_defect(skull, seed=n)
        write_mask(skull, data / "complete_skull" / f"{n:03d}.nrrd")
        write_mask(defective, data / "defective_skull" / f"{n:03d}.nrrd")
        write_mask(implant, data / "implant" / f"{n:03d}.nrrd")
    model = tmp_path / "model"
    new_bundle(PRESETS["test"], seed=1).save(model)
    code = main(
        [
            "fit-completion",
            "--model",
            str(model),
            "--data",
            str(data),
            "--cache-dir",
            str(tmp_path / "c"),
            "--progress",
            "none",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "|DEV_cranial|" in out and "no facial cases" in out
    loaded = ModelBundle.load(model)
    assert set(loaded.centroids) == {"complete", "cranial"}
    assert loaded.completion_info["defect_classifier"]["classes"] == ["cranial"]


def test_missing_input_is_reported_before_the_model_loads(setup, capsys, monkeypatch):
    root, _ = setup

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(ModelBundle, "load", no_load)
    code, _, err = _run(
        capsys, "--model", root / "model", "--input", root / "nothere.nrrd", "--output", root / "x.seg.nrrd"
    )
    assert code == 2 and err.startswith("skullvae complete: error:") and "nothere.nrrd" in err
    assert err.count("\n") == 1  # one line, not glued to a progress bar


def test_output_creates_at_most_its_last_folder(setup, capsys, tmp_path):
    root, _ = setup
    deep = tmp_path / "no" / "such" / "x.seg.nrrd"
    code, _, err = _run(capsys, "--model", root / "model", "--input", root / "defective.nrrd", "--output", deep)
    assert code == 2 and "--output" in err and not (tmp_path / "no").exists()
    code, _, err = _run(
        capsys,
        "--model",
        root / "model",
        "--input",
        root / "defective.nrrd",
        "--output",
        tmp_path / "new" / "x.seg.nrrd",
    )
    assert code == 0, err
    assert (tmp_path / "new" / "x.seg.nrrd").is_file()


def test_model_by_installed_name(setup, capsys, tmp_path, monkeypatch):
    from SkullVAELib.models import install_model

    root, _ = setup
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    install_model(root / "model", name="tiny-test")
    code, _, err = _run(
        capsys, "--model", "tiny-test", "--input", root / "defective.nrrd", "--output", tmp_path / "n.seg.nrrd"
    )
    assert code == 0, err
    code, _, err = _run(
        capsys, "--model", "no-such-model", "--input", root / "defective.nrrd", "--output", tmp_path / "m.seg.nrrd"
    )
    assert code == 2 and "no-such-model" in err and "not installed" in err


def test_no_output_is_written_into_a_model_part_given_outside_the_model(setup, capsys, tmp_path):
    """--atlas, --refiner and --residual are model parts as much as --model: an output there is refused
    (an atlas member was once overwritten by --uncertainty)."""
    root, _ = setup
    atlas = tmp_path / "ATL"
    atlas.mkdir()
    (atlas / "atlas.json").write_text('{"cases": []}')
    (atlas / "000.nrrd").write_bytes((root / "defective.nrrd").read_bytes())
    member = (atlas / "000.nrrd").read_bytes()
    residual = tmp_path / "residual.stl"  # a model file whatever its name
    residual.write_bytes(b"weights")
    base = ["--model", root / "model", "--input", root / "defective.nrrd", "--sources", "rimfit", "--progress", "none"]
    cases = [
        (["--atlas", atlas, "--output", tmp_path / "r.seg.nrrd", "--uncertainty", atlas / "000.nrrd", "--samples", "2"],
         f"--uncertainty lies inside the atlas folder {atlas}"),
        (["--atlas", atlas, "--output", atlas / "r.seg.nrrd"], "--output lies inside the atlas folder"),
        (["--residual", residual, "--output", tmp_path / "r.seg.nrrd", "--implant-stl", residual],
         f"--implant-stl is the model file {residual}"),
    ]  # fmt: skip
    for extra, needle in cases:
        code, _, err = _run(capsys, *base, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert (atlas / "000.nrrd").read_bytes() == member and residual.read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ATL", "residual.stl"]  # nothing written
    assert sorted(p.name for p in atlas.iterdir()) == ["000.nrrd", "atlas.json"]


def test_samples_alone_and_a_missing_model_name_the_flags_given(setup, capsys, tmp_path):
    """--samples without --uncertainty would sample and write nothing of it: refused; the error for a
    missing model names the flag the user gave, not one they did not."""
    root, _ = setup
    base = ["--input", root / "defective.nrrd", "--output", tmp_path / "r.seg.nrrd", "--progress", "none"]
    code, _, err = _run(capsys, "--model", root / "model", *base, "--samples", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--samples" in err and "--uncertainty" in err, err
    code, _, err = _run(capsys, *base, "--uncertainty", tmp_path / "u.nrrd")
    assert code == 2 and "--uncertainty needs a trained model (--model)" in err and "--raw" not in err, err
    code, _, err = _run(capsys, *base, "--raw")
    assert code == 2 and "--raw needs a trained model (--model)" in err and "--uncertainty" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_slicer_segmentation_is_completed_from_the_segment_named(tmp_path, setup, capsys):
    """A .seg.nrrd of the skull and a brain: refused in one line (exit 2) without --segment, completed from the
    named segment with it, alone or in a batch (named after its case, not "<case>.seg.seg.nrrd")."""
    from SkullVAELib.io.segfile import Segment, write_segmentation

    _, defective = setup
    brain = np.zeros(defective.shape, dtype=bool)
    brain[24:40, 24:40, 16:32] = True
    brain &= ~defective.mask
    source = tmp_path / "in" / "Patient 7.seg.nrrd"
    source.parent.mkdir()
    write_segmentation(source, defective, [Segment("Skull", defective.mask), Segment("Brain", brain)])
    out = tmp_path / "result.seg.nrrd"
    code, _, err = _run(capsys, "--input", source, "--output", out, "--no-mirror", "--progress", "none")
    assert code == 2 and "holds 2 segments ('Skull', 'Brain')" in err and not out.exists()
    code, _, err = _run(
        capsys, "--input", source, "--output", out, "--segment", "Skull", "--no-mirror", "--progress", "none"
    )
    assert code == 0, err
    geometry, masks = read_segmentation(out)
    assert geometry.same_geometry(defective) and np.array_equal(masks["Patient bone"], defective.mask)
    assert masks["Implant"].any()
    argv = ["--input", source.parent, "--output", tmp_path / "batch", "--segment", "skull", "--jobs", "1"]
    code, _, err = _run(capsys, *argv, "--no-mirror", "--progress", "none")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "batch").glob("*.seg.nrrd")) == ["Patient 7.seg.nrrd"]
