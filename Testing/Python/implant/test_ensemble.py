"""An ensemble of learned members (issue 24): several refiner (or residual) files are one predictor
that averages the members' probabilities (shifts in mm) before the threshold; one member is that
member; members on different grids are refused in one line naming the file (exit 2 from the CLI)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_residual import ConstantShift  # a stand-in network: one number everywhere

from SkullVAELib.bundle.folder import ModelFolder
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect, facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.ensemble import MemberMean
from SkullVAELib.implant.learned.config import RefinerConfig, save_refiner
from SkullVAELib.implant.learned.infer import FacialRefiner, learned_implant, member_probability
from SkullVAELib.implant.residual.config import ResidualConfig, save_residual
from SkullVAELib.implant.residual.infer import CranialResidual, corrected_implant, member_shift
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
TINY = RefinerConfig(spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))
SMALL = ResidualConfig(spacing_mm=6.0, crop_shape=(24, 24, 24), channels=(4, 8), sdf_clip_mm=10.0, max_shift_mm=4.0)


def random_refiner(path, seed: int, cfg: RefinerConfig = TINY, train_ids=("001",)) -> None:
    """A refiner of random weights (its last bias raised so that part of the crop is implant)."""
    torch.manual_seed(seed)
    network = cfg.network()
    last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
    with torch.no_grad():
        last.bias.add_(0.5 * seed)
    save_refiner(path, network, cfg, {"train_ids": list(train_ids), "val_ids": ["009"]})


def random_residual(path, seed: int, cfg: ResidualConfig = SMALL) -> None:
    """A residual whose head is random (not zero), so that its shift is not 0."""
    torch.manual_seed(seed)
    network = cfg.network()
    head = network[-1]
    with torch.no_grad():
        head.weight.normal_(0.0, 0.5)
        head.bias.fill_(float(seed) - 1.0)
    save_residual(path, network, cfg, {"train_ids": [f"{seed:03d}"]})


@pytest.fixture(scope="module")
def facial_case():
    return facial_defect(make_phantom(3, SHAPE, SPACING), seed=0)[0]


@pytest.fixture(scope="module")
def cranial_case():
    defective, _ = cranial_defect(make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2)), 1, style="skullbreak")
    return defective, rim_fit(defective).implant


# --- the facial refiner ------------------------------------------------------------------------
def test_an_ensemble_of_one_refiner_is_that_refiner(tmp_path, facial_case):
    random_refiner(tmp_path / "a.safetensors", 1)
    alone = FacialRefiner.load(tmp_path / "a.safetensors")
    assert FacialRefiner.load([tmp_path / "a.safetensors"]).network is not None
    one = learned_implant(facial_case, MemberMean([alone.network], [lambda n, x: member_probability(n, x, TINY)]), TINY)
    plain = alone(facial_case)
    assert plain.implant.any()
    np.testing.assert_array_equal(one.implant, plain.implant)
    np.testing.assert_array_equal(one.probability, plain.probability)
    listed = FacialRefiner.load([tmp_path / "a.safetensors"])
    np.testing.assert_array_equal(listed(facial_case).implant, plain.implant)


def test_two_refiners_average_their_probabilities_before_the_threshold(tmp_path, facial_case):
    random_refiner(tmp_path / "a.safetensors", 1)
    mirrored = dataclasses.replace(TINY, test_time_mirror=True)
    random_refiner(tmp_path / "b.safetensors", 2, mirrored, train_ids=("002",))
    a, b = FacialRefiner.load(tmp_path / "a.safetensors"), FacialRefiner.load(tmp_path / "b.safetensors")
    both = FacialRefiner.load([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    x = (torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    with torch.no_grad():
        expected = 0.5 * (member_probability(a.network, x, a.cfg) + member_probability(b.network, x, b.cfg))
        torch.testing.assert_close(member_probability(both.network, x, both.cfg), expected, atol=1e-6, rtol=0)
    # on a patient: the resampling is linear, so the patient-grid probability is the mean too
    pa, pb, pab = a(facial_case), b(facial_case), both(facial_case)
    mean = 0.5 * (pa.probability_on_grid() + pb.probability_on_grid())
    np.testing.assert_allclose(pab.probability_on_grid(), mean, atol=1e-5)
    assert pab.implant.any() and not (pab.implant & facial_case.mask).any()
    assert both.cfg.test_time_mirror is False and both.cfg.spacing_mm == TINY.spacing_mm  # each member mirrors itself
    assert both.info["train_ids"] == ["001", "002"] and len(both.info["members"]) == 2


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"spacing_mm": 2.0}, "spacing_mm"),
        ({"crop_offset_mm": (-60, -32, -8)}, "crop_offset_mm"),
        ({"test_time_shifts": 2}, "test_time_shifts"),  # shifts move the one grid all members share
    ],
)
def test_refiners_on_different_grids_are_refused_in_one_line(tmp_path, change, word):
    random_refiner(tmp_path / "a.safetensors", 1)
    random_refiner(tmp_path / "odd.safetensors", 2, dataclasses.replace(TINY, **change))
    with pytest.raises(SkullVAEError, match=word) as caught:
        FacialRefiner.load([tmp_path / "a.safetensors", tmp_path / "odd.safetensors"])
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and "odd.safetensors" in message and "a.safetensors" in message


def test_a_model_folder_of_several_refiners_is_one_ensemble(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    random_refiner(model / "refiner.safetensors", 1)
    random_refiner(model / "refiner.second.safetensors", 2, train_ids=("002",))
    (model / "refiner_notes.safetensors").write_text("not a member: not refiner.NAME.safetensors")
    folder = ModelFolder(model)
    assert folder.refiner_paths == (model / "refiner.safetensors", model / "refiner.second.safetensors")
    assert folder.refiner_path == model / "refiner.safetensors" and folder.parts() == ["refiner"]
    refiner = folder.refiner("cpu")
    assert isinstance(refiner.network, MemberMean) and refiner.info["train_ids"] == ["001", "002"]
    given = ModelFolder(model, refiner=[model / "refiner.safetensors"])  # files given replace the folder's
    assert given.refiner_paths == (model / "refiner.safetensors",)
    with pytest.raises(SkullVAEError, match="no such refiner file"):
        ModelFolder(None, refiner=[model / "refiner.safetensors", tmp_path / "missing.safetensors"])


def test_the_cli_refuses_mismatched_members_with_exit_code_2(tmp_path, facial_case, capsys):
    from SkullVAELib.cli import main

    random_refiner(tmp_path / "a.safetensors", 1)
    random_refiner(tmp_path / "odd.safetensors", 2, dataclasses.replace(TINY, crop_shape=(32, 32, 48)))
    write_mask(facial_case, tmp_path / "defective.nrrd")
    argv = ["complete", "--input", tmp_path / "defective.nrrd", "--output", tmp_path / "x.seg.nrrd"]
    argv += ["--defect", "facial", "--sources", "learned", "--refiner", tmp_path / "a.safetensors"]
    argv += ["--refiner", tmp_path / "odd.safetensors", "--progress", "none"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "odd.safetensors" in err and "crop_shape is 32x32x48" in err
    assert not (tmp_path / "x.seg.nrrd").exists()


# --- the cranial residual ----------------------------------------------------------------------
def test_an_ensemble_of_one_residual_is_that_residual(cranial_case):
    defective, rimfit = cranial_case
    member = ConstantShift(3.0)
    one = MemberMean([member], [lambda n, x: member_shift(n, x, SMALL)])
    plain, ensemble = (corrected_implant(defective, rimfit, net, SMALL) for net in (member, one))
    assert plain.changed_mm3 > 0
    np.testing.assert_array_equal(ensemble.implant, plain.implant)


def test_two_residuals_average_their_shifts(tmp_path, cranial_case):
    random_residual(tmp_path / "a.safetensors", 1)
    random_residual(tmp_path / "b.safetensors", 2, dataclasses.replace(SMALL, max_shift_mm=3.0))
    a, b = (CranialResidual.load(tmp_path / f"{n}.safetensors") for n in "ab")
    both = CranialResidual.load([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    x = torch.randn(1, 3, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sa, sb = member_shift(a.network, x, a.cfg), member_shift(b.network, x, b.cfg)
        assert not torch.allclose(sa, sb)
        torch.testing.assert_close(member_shift(both.network, x, both.cfg), 0.5 * (sa + sb), atol=1e-6, rtol=0)
    # constant members: the mean of a 2.5 mm and a 4 mm shift moves the surface between theirs
    defective, rimfit = cranial_case
    members = [ConstantShift(3.0), ConstantShift(50.0)]
    mean = MemberMean(members, [lambda n, x: member_shift(n, x, SMALL)] * 2)
    small, large, middle = (corrected_implant(defective, rimfit, n, SMALL).implant for n in (*members, mean))
    assert small.sum() < middle.sum() < large.sum()
    assert not (middle & defective.mask).any()


def test_residuals_on_different_grids_are_refused_in_one_line(tmp_path):
    random_residual(tmp_path / "a.safetensors", 1)
    random_residual(tmp_path / "odd.safetensors", 2, dataclasses.replace(SMALL, sdf_clip_mm=12.0))
    with pytest.raises(SkullVAEError, match="sdf_clip_mm is 12, a.safetensors's is 10") as caught:
        CranialResidual.load([tmp_path / "a.safetensors", tmp_path / "odd.safetensors"])
    assert len(str(caught.value).splitlines()) == 1 and "odd.safetensors" in str(caught.value)


def test_a_model_folder_of_several_residuals_is_one_ensemble(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    random_residual(model / "residual.safetensors", 1)
    random_residual(model / "residual.d.safetensors", 2)
    folder = ModelFolder(model)
    assert folder.has_residual and len(folder.residual_paths) == 2
    residual = folder.residual("cpu")
    assert isinstance(residual.network, MemberMean) and residual.info["train_ids"] == ["001", "002"]
