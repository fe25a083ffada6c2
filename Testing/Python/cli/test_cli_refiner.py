"""The learned facial refiner in `skullvae complete` (MODEL/refiner.safetensors, --refiner,
--sources without learned), in `evaluate --implants learned` and in the Slicer command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.cli import main
from SkullVAELib.core.config import PRESETS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.learned.config import RefinerConfig, save_refiner
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
TINY = RefinerConfig(spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))


def confident_refiner(path, info: dict) -> None:
    """A refiner that calls every voxel of its face crop implant (its last bias is +20)."""
    network = TINY.network()
    last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(20.0)
    save_refiner(path, network, TINY, info)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_refiner")
    (root / "data" / "complete_skull").mkdir(parents=True)
    for seed in (1, 2):
        write_mask(make_phantom(seed, SHAPE, SPACING), root / "data" / "complete_skull" / f"{seed:03d}.nrrd")
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    bundle.save(root / "model")
    confident_refiner(root / "model" / "refiner.safetensors", {"train_ids": ["001"], "val_ids": []})
    defective, truth = facial_defect(make_phantom(7, SHAPE, SPACING), seed=0)
    write_mask(defective, root / "defective.nrrd")
    return root, defective, truth


def test_complete_uses_the_bundle_refiner_for_a_facial_defect(setup, run_complete):
    root, defective, truth = setup
    done, segments, _ = run_complete(root, "learned", "facial")
    assert done["implant_source"] == "learned"
    assert "learned_refiner_network" in done["timings"]
    implant = segments["Implant"]
    assert implant.shape == defective.shape and implant.any()
    assert not (implant & defective.mask).any()  # the patient's bone is never part of the implant
    assert (implant & truth.mask).sum() >= 0.9 * truth.mask.sum()  # the crop covers the whole face
    plain, _, _ = run_complete(root, "plain", "facial", "--sources", "rimfit,atlas,model")
    assert plain["implant_source"] != "learned"  # the untrained model may propose nothing: "none"
    cranial, _, _ = run_complete(root, "cranial", "cranial")
    assert cranial["implant_source"] != "learned"  # the refiner is for faces only


def test_complete_names_a_missing_refiner_file(setup, capsys, tmp_path):
    root, _, _ = setup
    argv = ["complete", "--model", str(root / "model"), "--input", str(root / "defective.nrrd")]
    argv += ["--output", str(tmp_path / "x.seg.nrrd"), "--defect", "facial", "--refiner", str(tmp_path / "none.st")]
    assert main([*argv, "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.st" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_evaluate_learned_scores_the_refiner_and_refuses_its_training_cases(setup, tmp_path):
    from SkullVAELib.workflows.implants import evaluate_implants

    root, _, _ = setup
    refiner = root / "model" / "refiner.safetensors"
    with pytest.raises(SkullVAEError, match="refiner trained on"):
        evaluate_implants([root / "data"], tmp_path / "a", ["001"], ["learned"], ["facial"], refiner=refiner)
    with pytest.raises(SkullVAEError, match="--refiner"):
        evaluate_implants([root / "data"], tmp_path / "b", ["002"], ["learned"], ["facial"])
    summary, table = evaluate_implants(
        [root / "data"], tmp_path / "c", ["002"], ["learned", "rimfit+learned"], ["facial"], refiner=refiner
    )
    rows = json.loads((tmp_path / "c" / "implants.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"learned", "rimfit+learned"}
    assert all(r["empty"] == 0.0 and r["dsc"] > 0 for r in rows)
    assert summary[("learned", "facial")]["n"] == 1 and table.is_file()


def test_slicer_command_line_switches_the_refiner_off():
    import sys
    from pathlib import Path

    pytest.importorskip("slicer")
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "SkullVAE"))
    from SkullVAESlicerLib.process import buildCompleteCommand

    from SkullVAELib.cli import build_parser

    on = buildCompleteCommand("in.nrrd", "model", "out.seg.nrrd")
    assert "learned" in on[on.index("--sources") + 1]
    off = buildCompleteCommand("in.nrrd", "model", "out.seg.nrrd", sources=("rimfit", "atlas", "model"))
    args = build_parser(off[off.index("complete") :]).parse_args(off[off.index("complete") :])
    assert "learned" not in args.sources


def test_train_refiner_keeps_packed_grids_without_overwrite(tmp_path, capsys, monkeypatch):
    import SkullVAELib.workflows.refiner as refiner_workflow

    packed = tmp_path / "out" / "grids.npz"
    packed.parent.mkdir()
    packed.write_bytes(b"packed earlier")
    monkeypatch.setattr(refiner_workflow, "train_refiner", lambda *a, **k: pytest.fail("training started"))
    argv = ["train-refiner", "--data", str(tmp_path), "--train-ids", "001", "--out", str(packed.parent)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(packed) in err[0] and "--overwrite" in err[0]
    assert packed.read_bytes() == b"packed earlier"
