"""The Completer: one owner of the pipeline, implant sources as plugins, the model optional."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect, facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.sources import Proposal, base, register_source, source_names
from SkullVAELib.io.image import write_mask
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings, RimFitSettings

SHAPE, SPACING = (96, 96, 72), (2.2, 2.2, 2.2)
NO_MIRROR = RimFitSettings(mirror=False)  # faster; the mirror cue has its own tests


@pytest.fixture(scope="module")
def cranial_case():
    return cranial_defect(make_phantom(1, SHAPE, SPACING), 1, style="skullbreak")


@pytest.fixture(scope="module")
def facial_case():
    return facial_defect(make_phantom(2, (64, 64, 48), (3.2, 3.2, 3.2)), seed=0)


def test_a_cranial_defect_completes_without_any_model(cranial_case):
    defective, truth = cranial_case
    before = defective.mask.copy()
    result = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    assert result.source == "rimfit" and result.defect == "cranial" and not result.gamma_used
    assert "enclosed hole" in result.defect_reason
    assert np.array_equal(defective.mask, before)  # the input is never modified
    assert defective.mask.flags.writeable  # held read-only while completed (core.unchanged), then handed back
    assert not (result.implant.mask & defective.mask).any()
    assert dice(result.implant.mask, truth.mask) >= 0.8
    assert np.array_equal(result.completed.mask, defective.mask | result.implant.mask)
    assert result.implant.same_geometry(defective)
    record = result.record()
    assert record["implant_source"] == "rimfit" and record["implant_volume_mm3"] > 0


def test_the_self_check_is_reported_only_when_asked_for(cranial_case):
    """``RimFitSettings.self_check``: the rim fit tried on the phantom's intact vault, in the record and a note;
    the implant itself is the same as without it."""
    defective, _ = cranial_case
    plain = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    assert plain.record()["implant_self_check"] is None and plain.record()["implant_self_check_note"] == ""
    checked = Completer(CompletionSettings(rimfit=RimFitSettings(mirror=False, self_check=True))).complete(defective)
    assert np.array_equal(checked.implant.mask, plain.implant.mask)
    record = json.loads(json.dumps(checked.record(), allow_nan=False))
    check = record["implant_self_check"]
    assert check["places"] >= 1 and 0.5 < check["lowest"] <= check["dsc"] <= check["highest"] <= 1.0
    assert f"tried on {check['places']} intact place" in record["implant_self_check_note"]
    assert "rimfit_self_check" in checked.timings


def test_a_facial_defect_without_a_facial_source_names_what_to_install(facial_case):
    defective, _ = facial_case
    with pytest.raises(SkullVAEError, match="facial defect needs the learned refiner, an atlas set or a trained model"):
        Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)


def test_a_complete_skull_without_a_model_is_said_to_have_no_cranial_defect():
    """No enclosed vault hole and no facial source: the skull may well be complete. The error says that first,
    then what a facial defect needs and how to insist on cranial, in one line (before: "a facial defect needs
    ..." followed by every source's reason, as if the skull surely had a facial defect)."""
    complete = make_phantom(1, SHAPE, SPACING)
    with pytest.raises(SkullVAEError) as error:
        Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(complete)
    text = str(error.value)
    assert "no cranial defect found (the rim fit found no enclosed hole in the vault" in text
    assert "a complete skull has nothing to fill" in text and "give --defect cranial" in text
    assert "rimfit:" not in text and len(text.splitlines()) == 1


def test_auto_reads_the_defect_from_the_geometry(facial_case, cranial_case):
    from SkullVAELib.bundle.folder import ModelFolder
    from SkullVAELib.pipeline.context import CompletionContext
    from SkullVAELib.pipeline.defect import decide_defect

    settings = CompletionSettings(rimfit=NO_MIRROR)
    for (skull, _), expected in ((cranial_case, "cranial"), (facial_case, "facial")):
        decision = decide_defect(CompletionContext(skull, settings, ModelFolder(None)))
        assert decision.defect == expected, decision


class _Stamp:
    """A source of this test: one file's worth of code, one registration line."""

    name: ClassVar[str] = "stamp"
    uses_gamma: ClassVar[bool] = False
    implant: ClassVar[np.ndarray | None] = None  # what it stamps (the test sets the true implant)

    def __init__(self, settings) -> None:
        self.settings = settings

    def applies(self, context):
        return None if context.defect == "facial" else "stamps only faces"

    def propose(self, context):
        return Proposal(self.implant, messages=[], timings={"stamp": 0.0})


@pytest.fixture
def own_registry(monkeypatch):
    """The sources' registry as a copy this test may add to (restored after it, whatever ran before)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def test_a_new_source_is_one_class_and_one_registration_line(own_registry, facial_case, cranial_case):
    register_source(_Stamp)
    assert "stamp" in source_names()
    defective, truth = facial_case
    _Stamp.implant = truth.mask | defective.mask  # the Completer removes the patient's bone
    settings = CompletionSettings(sources=("rimfit", "stamp"), rimfit=NO_MIRROR)
    result = Completer(settings).complete(defective)
    assert result.source == "stamp"
    assert result.skipped == {"rimfit": "the rim fit is for cranial defects (this is a facial defect)"}
    assert not (result.implant.mask & defective.mask).any()  # post-processed, bone-free
    assert dice(result.implant.mask, truth.mask) > 0.8  # the shared post-processing trims thin shells
    cranial = Completer(settings).complete(cranial_case[0])
    assert cranial.source == "rimfit" and "stamp" not in cranial.skipped  # the first that applies wins


def test_unknown_or_repeated_sources_are_refused():
    with pytest.raises(SkullVAEError, match="unknown implant source 'magic'"):
        CompletionSettings(sources=("rimfit", "magic"))
    with pytest.raises(SkullVAEError, match="named twice"):
        CompletionSettings(sources=("rimfit", "rimfit"))
    with pytest.raises(SkullVAEError, match="no implant source"):
        CompletionSettings(sources=())


def test_a_gamma_sweep_fits_the_rim_once(monkeypatch, cranial_case):
    import SkullVAELib.implant.rimfit as rimfit

    calls = []
    real = rimfit.rim_fit
    monkeypatch.setattr(rimfit, "rim_fit", lambda *a, **k: calls.append(1) or real(*a, **k))
    results = Completer(CompletionSettings(rimfit=NO_MIRROR)).sweep(cranial_case[0], [0.5, 1.0, 1.5])
    assert len(calls) == 1
    assert [r.gamma for r in results] == [0.5, 1.0, 1.5]
    assert all(np.array_equal(r.implant.mask, results[0].implant.mask) for r in results)  # γ does not change it


def test_the_raw_skull_and_the_uncertainty_need_a_model(cranial_case):
    import dataclasses

    settings = CompletionSettings(rimfit=NO_MIRROR)
    raw = dataclasses.replace(settings, vae=dataclasses.replace(settings.vae, keep_patient_bone=False))
    with pytest.raises(SkullVAEError, match="needs a trained model"):
        Completer(raw).complete(cranial_case[0])
    with pytest.raises(SkullVAEError, match="no such model folder"):
        Completer(CompletionSettings(model="/nonexistent/model"))


def test_complete_without_a_model_imports_neither_monai_nor_the_vae(tmp_path, cranial_case):
    """The rim-fit path of `skullvae complete` (a fresh process) never imports MONAI or the networks."""
    write_mask(cranial_case[0], tmp_path / "d.nrrd")
    code = (
        "import sys; from SkullVAELib.cli import main; "
        f"rc = main(['complete', '--input', {str(tmp_path / 'd.nrrd')!r}, '--output', {str(tmp_path / 'o.seg.nrrd')!r}, "
        "'--no-mirror', '--progress', 'none']); "
        "print(rc, 'monai' in sys.modules, 'SkullVAELib.vae.networks' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-3:] == ["0", "False", "False"], out
    assert (tmp_path / "o.seg.nrrd").is_file()


def test_a_model_folder_with_a_broken_config_is_refused_before_any_work(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(SkullVAEError, match="config.json"):
        Completer(CompletionSettings(model=tmp_path / "m"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SkullVAEError, match="not a SkullVAE model folder"):
        Completer(CompletionSettings(model=tmp_path / "empty"))


def test_a_failed_implant_is_passed_over_and_every_result_carries_its_quality(own_registry, monkeypatch, cranial_case):
    """The quality score gates the sources: below the floor, the next source is tried; when all fail,
    the best is kept and called doubtful."""
    import SkullVAELib.implant.quality as quality
    from SkullVAELib.pipeline.completer import QUALITY_FLOOR

    defective, truth = cranial_case
    real = quality.implant_quality
    result = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    assert result.quality is not None and result.quality >= QUALITY_FLOOR and result.record()["implant_quality"]
    parts = json.loads(json.dumps(result.record()["implant_quality_parts"], allow_nan=False))  # plain JSON
    assert set(parts) == {"components", "measures"} and parts["measures"]["reach_mm"] > 0
    assert parts["components"]["surface"] == pytest.approx(
        real(defective, result.implant.mask).components["surface"], abs=1e-4
    )

    def failing(skull, implant, *a, **k):  # the rim fit "fails"; anything else scores as it is
        score = real(skull, implant, *a, **k)
        return score if implant.sum() != result.implant.mask.sum() else quality.ImplantQuality(0.1, {}, {}, "stepped")

    monkeypatch.setattr(quality, "implant_quality", failing)
    _Stamp.implant = truth.mask | defective.mask
    register_source(_Stamp)
    settings = CompletionSettings(sources=("rimfit", "stamp"), rimfit=NO_MIRROR)
    _Stamp.applies = lambda self, context: None
    try:
        passed = Completer(settings).complete(defective)
    finally:
        _Stamp.applies = lambda self, context: None if context.defect == "facial" else "stamps only faces"
    assert passed.source == "stamp" and "quality 0.10" in passed.skipped["rimfit"]
    alone = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    assert alone.source == "rimfit" and any("doubtful implant" in w for w in alone.warnings)
    unscored = Completer(CompletionSettings(rimfit=NO_MIRROR, quality=False)).complete(defective)
    assert unscored.quality is None and unscored.source == "rimfit"


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(SkullVAEError, match="unknown precision 'fp16': precision must be one of float32, bfloat16"):
        CompletionSettings(precision="fp16")
    assert CompletionSettings(precision="bfloat16").precision == "bfloat16"


def test_an_implant_of_middling_quality_is_kept_and_the_user_asked_to_check_it(monkeypatch, cranial_case):
    """A score in [floor, REVIEW_BELOW): the implant is kept as it is, with one line asking for a check that
    names the weakest component; at or above the band no such line, below it the implant is called doubtful."""
    import SkullVAELib.implant.quality as quality
    from SkullVAELib.pipeline.completer import QUALITY_FLOOR, REVIEW_BELOW, review_note

    defective, _ = cranial_case
    real = quality.implant_quality
    assert QUALITY_FLOOR < REVIEW_BELOW
    scores = {"now": 0.0}

    def scored(skull, implant, *a, **k):
        found = real(skull, implant, *a, **k)
        components = dict(found.components, thickness=scores["now"])
        return quality.ImplantQuality(scores["now"], components, found.measures, found.explanation)

    monkeypatch.setattr(quality, "implant_quality", scored)
    results = {}
    for score in (QUALITY_FLOOR, (QUALITY_FLOOR + REVIEW_BELOW) / 2, REVIEW_BELOW, QUALITY_FLOOR / 2):
        scores["now"] = score
        results[score] = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    checks = {s: [w for w in r.warnings if w.startswith("check this implant")] for s, r in results.items()}
    assert len(checks[QUALITY_FLOOR]) == 1 and "(weakest: thickness)" in checks[QUALITY_FLOOR][0]
    assert len(checks[(QUALITY_FLOOR + REVIEW_BELOW) / 2]) == 1 and "\n" not in checks[QUALITY_FLOOR][0]
    assert checks[REVIEW_BELOW] == [] and checks[QUALITY_FLOOR / 2] == []
    assert [r.record()["implant_review"] for r in results.values()] == [True, True, False, False]
    assert any("doubtful implant" in w for w in results[QUALITY_FLOOR / 2].warnings)
    implants = [r.implant.mask for r in results.values()]
    assert all(r.source == "rimfit" for r in results.values()) and all((m == implants[0]).all() for m in implants)
    assert review_note(None) == []


def test_a_facial_implant_in_the_band_is_not_flagged(own_registry, monkeypatch, facial_case):
    """The band was chosen on cranial implants: a facial implant scoring in it carries no review line."""
    import SkullVAELib.implant.quality as quality
    from SkullVAELib.pipeline.completer import QUALITY_FLOOR, REVIEW_BELOW

    defective, truth = facial_case
    band = quality.ImplantQuality((QUALITY_FLOOR + REVIEW_BELOW) / 2, {"thickness": 0.4}, {}, "plate too thick")
    monkeypatch.setattr(quality, "implant_quality", lambda *a, **k: band)
    register_source(_Stamp)
    _Stamp.implant = truth.mask | defective.mask
    done = Completer(CompletionSettings(defect="facial", sources=("stamp",))).complete(defective)
    assert done.source == "stamp" and done.quality == band.score
    assert not done.record()["implant_review"] and not any(w.startswith("check this") for w in done.warnings)


def test_auto_asks_the_models_classifier_whatever_the_gammas(monkeypatch, tiny_model, facial_case):
    """No enclosed vault hole and a model: the classifier decides (it sees "auto"), the same for γ = 1
    alone as for a sweep 0, 1 (the decision was once "cranial" at 1.0 without classifying at γ ≠ 0)."""
    import SkullVAELib.vae.completion as vae_completion

    seen = []
    real = vae_completion.choose_defect

    def classify(bundle, mu, cfg):
        seen.append(cfg.defect)
        return ("facial", 0.8, {"cranial": 0.2, "facial": 0.8}) if cfg.defect == "auto" else real(bundle, mu, cfg)

    monkeypatch.setattr(vae_completion, "choose_defect", classify)
    settings = CompletionSettings(model=tiny_model, sources=("model",), defect="auto", rimfit=NO_MIRROR)
    for gammas in ([1.0], [0.0, 1.0]):
        seen.clear()
        results = Completer(settings).sweep(facial_case[0], gammas)
        assert seen[0] == "auto", seen
        for result in results:
            assert (result.defect, result.confidence) == ("facial", 0.8), (gammas, result.defect_reason)
            assert result.defect_reason == "facial: the model's classifier"


def test_gamma_zero_with_the_model_source_is_the_reconstruction(tiny_model, facial_case):
    """γ = 0 adds no latent shift: with the model source serving, the result is the reconstruction with an
    empty implant and a note (a sweep 0, 0.5, 1 and `--raw --gamma 0` once failed: "no source applies")."""
    import dataclasses

    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.core.config import CompletionConfig
    from SkullVAELib.pipeline.completer import RECONSTRUCTION_NOTE
    from SkullVAELib.vae.completion import complete

    defective = facial_case[0]
    settings = CompletionSettings(model=tiny_model, sources=("model",), defect="facial", rimfit=NO_MIRROR)
    zero, half, one = Completer(settings).sweep(defective, [0.0, 0.5, 1.0])
    assert zero.source == "model" and zero.gamma_used and not zero.implant.mask.any()
    assert RECONSTRUCTION_NOTE in zero.warnings and "model" not in zero.skipped
    assert np.array_equal(zero.completed.mask, defective.mask)  # the patient's bone ∪ an empty implant
    assert RECONSTRUCTION_NOTE not in half.warnings + one.warnings  # γ ≠ 0: the model source proposes
    raw = dataclasses.replace(settings, vae=dataclasses.replace(settings.vae, keep_patient_bone=False))
    done = Completer(raw).complete(defective, gamma=0.0)
    expected = complete(defective, ModelBundle.load(tiny_model), CompletionConfig(gamma=0.0), device="cpu").raw
    assert done.source == "model" and not done.implant.mask.any()
    assert np.array_equal(done.completed.mask, expected.mask)  # the model's raw reconstruction


def test_the_quality_reported_is_the_finished_implants(cranial_case):
    """With a gap to the bone the implant delivered no longer meets the rim: the score, the review note and the
    volume check are those of the finished implant, not of the source's unfinished one (before: the unfinished
    score was reported beside the finished implant's volume)."""
    from SkullVAELib.implant.finish import FinishSettings
    from SkullVAELib.implant.quality import implant_quality

    defective, _ = cranial_case
    plain = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(defective)
    gapped = Completer(CompletionSettings(rimfit=NO_MIRROR, finish=FinishSettings(margin_mm=6.0))).complete(defective)
    assert 0 < gapped.implant.mask.sum() < plain.implant.mask.sum()
    assert gapped.quality == pytest.approx(implant_quality(defective, gapped.implant.mask).score)
    assert gapped.quality < plain.quality


def test_the_models_implant_loses_a_far_piece_like_every_source(monkeypatch, tiny_model, facial_case):
    """The model's decoded implant keeps pieces near the patient's bone; one 60 mm from the implant (a blob the
    decoder put at the skull base) once survived, because the model source skipped the shared post-processing.
    It now goes, and the implant proper stays."""
    from types import SimpleNamespace

    from SkullVAELib.implant.postprocess import postprocess_implant
    from SkullVAELib.pipeline.context import CompletionContext

    defective, truth = facial_case
    implant = truth.mask.copy()
    far = np.zeros_like(implant)
    bone = np.argwhere(defective.mask)
    centre = np.argwhere(implant).mean(axis=0)
    spot = bone[np.argmax(np.linalg.norm((bone - centre) * defective.spacing, axis=1))]  # the farthest bone
    box = tuple(slice(max(int(c) - 3, 0), int(c) + 3) for c in spot)
    far[box] = True
    far &= ~defective.mask
    assert far.sum() * defective.voxel_volume_mm3 > 200  # no speck: only the far-piece rule removes it
    fake = SimpleNamespace(implant=SimpleNamespace(mask=implant | far), messages=[], timings={})
    monkeypatch.setattr(CompletionContext, "model_completion", lambda self: fake)
    settings = CompletionSettings(model=tiny_model, sources=("model",), defect="facial", rimfit=NO_MIRROR)
    result = Completer(settings).complete(defective)
    assert result.source == "model"
    assert not (result.implant.mask & far).any()
    assert np.array_equal(result.implant.mask, postprocess_implant(implant, defective))  # the implant proper stays


def test_a_speck_of_bone_is_refused_in_one_line():
    """A mask of a few voxels (a wrong label, a crop) has no shell for the rays: before, the rim fit stopped on an
    IndexError deep in its ray march; now the Completer refuses it in one line naming the file."""
    phantom = make_phantom(1, SHAPE, SPACING)
    speck = np.zeros_like(phantom.mask)
    speck[40:42, 40:42, 40:42] = True
    case = phantom.with_mask(speck)
    case.metadata["source"] = "speck.nrrd"
    with pytest.raises(
        SkullVAEError, match=r"speck\.nrrd: too little bone to complete \(0\.09 cm³ in 8 voxels"
    ) as error:
        Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(case)
    assert len(str(error.value).splitlines()) == 1
