"""Evaluation driver + report on a tiny untrained bundle and phantom cases (fast, 32³ grid)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from SkullVAELib.bundle.model_bundle import new_bundle
from SkullVAELib.core.config import PRESETS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.case_ids import parse_id_spec
from SkullVAELib.data.defects import cranial_defect, facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.report import id_ranges, write_report
from SkullVAELib.evaluation.table1 import evaluate, summarise
from SkullVAELib.io.image import SkullImage, write_mask
from SkullVAELib.training.log import write_log


@dataclass
class FakeCase:
    """Duck-typed dataset.Case."""

    case_id: str
    label: str
    path: Path
    implant_path: Path | None = None


def _write_cases(root: Path, ids: list[str], seed0: int) -> list[FakeCase]:
    cases = []
    for n, cid in enumerate(ids):
        skull = make_phantom(seed0 + n, shape=(48, 48, 40), spacing=None)
        cr, cr_implant = cranial_defect(skull, seed=n)
        fa, fa_implant = facial_defect(skull, seed=n)
        files = {}
        for name, image in (
            ("complete_skull", skull),
            ("defective_skull", cr),
            ("implant", cr_implant),
            ("facial_defective_skull", fa),
            ("facial_implant", fa_implant),
        ):
            files[name] = root / name / f"{cid}.nrrd"
            files[name].parent.mkdir(parents=True, exist_ok=True)
            write_mask(image, files[name])
        cases += [
            FakeCase(cid, "complete", files["complete_skull"]),
            FakeCase(cid, "cranial", files["defective_skull"], files["implant"]),
            # no implant file: the ground truth becomes complete − defective
            FakeCase(cid, "facial", files["facial_defective_skull"], None),
        ]
    return cases


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    test_cases = _write_cases(root, ["064", "065"], seed0=10)
    train_cases = _write_cases(root, ["000"], seed0=1)
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0, info={"beta": 100.0, "train_case_ids": ["000"]})
    rng = np.random.default_rng(0)
    d = bundle.network.latent_size
    bundle.set_centroids({"complete": rng.normal(size=d), "cranial": rng.normal(size=d), "facial": rng.normal(size=d)})
    result = evaluate(bundle, test_cases, train_cases, resample="area", device="cpu", n_permutations=20)
    return bundle, result, root


def test_evaluation_rows_and_tables(evaluated):
    _, result, _ = evaluated
    assert len(result.rows) == 6 and result.test_ids == ["064", "065"]
    assert result.train_ids == ["000"]
    for row in result.rows:
        assert 0.0 <= row["rec_dsc_model"] <= 1.0 and 0.0 <= row["rec_dsc_original"] <= 1.0
        if row["label"] == "complete":
            assert math.isnan(row["cmp_dsc_model"]) and math.isnan(row["implant_dsc"])
        else:
            assert 0.0 <= row["cmp_dsc_original"] <= 1.0
            assert 0.0 <= row["implant_bdsc"] <= 1.0
            assert row["auto_defect"] in ("cranial", "facial")
    assert set(result.table1["model_grid"]["rec"]) == {"cranial", "facial", "complete"}
    assert result.latents["test"]["mu"].shape == (6, 8)
    assert result.latents["train"]["mu"].shape == (3, 8)
    assert result.gaussianity["test"]["d"] == 8 and result.gaussianity["train"]["n"] == 3
    assert result.classification["n"] == 4


def test_report_files(evaluated, tmp_path):
    bundle, result, _ = evaluated
    log = tmp_path / "training_log.csv"
    rows = [
        {
            "stage": 1,
            "epoch": e,
            "beta": 100.0,
            "dice": 40.0 - e,
            "kld": 5.0 / e,
            "beta_kld": 500.0 / e,
            "loss": 1.0,
            "seconds": 1.0,
        }
        for e in range(1, 6)
    ]
    rows += [
        {
            "stage": 2,
            "epoch": e,
            "beta": 0.0,
            "dice": 30.0 - e,
            "kld": 0.0,
            "beta_kld": 0.0,
            "loss": 1.0,
            "seconds": 1.0,
        }
        for e in range(1, 4)
    ]
    write_log(log, rows)
    out = tmp_path / "report"
    path = write_report(result, bundle, out, train_log_csv=log, gammas=(0.0, 1.0))
    text = path.read_text()
    assert "did not train on" in text and "064-065" in text and "064, 065" in text
    assert "aggregated" in text and "32×32×32" in text and "stage1: 5, stage2: 3" in text
    for name in (
        "fig3_training_curves.png",
        "fig4_latent_pca.png",
        "fig5_gamma_sweep.png",
        "fig6_dsc_boxplots.png",
        "fig6_dsc_boxplots_model_grid.png",
        "fig7_completions_cranial.png",
        "fig8_completions_facial.png",
    ):
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    with (out / "metrics.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {r["label"] for r in table} == {"complete", "cranial", "facial"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_ids"] == ["064", "065"] and summary["model"]["kind"] == "aggregated"
    assert summary["model"]["beta"] == 100.0
    assert not list(out.glob(".*tmp*"))  # atomic writes left nothing behind


def test_latent_pca_plots_the_codes_the_centroids_live_in(evaluated, tmp_path, monkeypatch):
    """A decoupled decoder trained on z = μ + σ has its centroids and DEV in that code: Fig. 4 must
    project the same code for every case, else the ★ sit one σ away from their own classes."""
    from SkullVAELib.evaluation import figures

    bundle, result, _ = evaluated
    monkeypatch.setitem(bundle.info, "stage2_latent", "mu_plus_sigma")
    seen = {}

    def record(latents, centroids, path):
        seen.update(latents=latents, centroids=centroids)

    monkeypatch.setattr(figures, "plot_latent_pca", record)
    write_report(result, bundle, tmp_path / "report", gammas=())
    for split in ("test", "train"):
        part = result.latents[split]
        expected = part["mu"] + np.exp(0.5 * part["logvar"])
        np.testing.assert_allclose(seen["latents"][split]["mu"], expected, rtol=1e-6)
        assert seen["latents"][split]["labels"] == part["labels"]
    assert seen["centroids"] is bundle.centroids


def test_evaluate_needs_centroids(tmp_path):
    bundle = new_bundle(PRESETS["test"], seed=0)
    with pytest.raises(SkullVAEError, match="fit-completion"):
        evaluate(bundle, [FakeCase("1", "complete", tmp_path / "x.nrrd")])


def test_evaluate_refuses_a_complete_partner_on_another_grid(tmp_path):
    """The complete skull is the CMP truth and (without an implant file) gives the true implant
    voxel by voxel: one of the same shape but shifted by 3 voxels must be refused, not compared."""
    skull = make_phantom(10, shape=(48, 48, 40), spacing=None)
    defective, _ = cranial_defect(skull, seed=0)
    origin = skull.origin + skull.direction @ (3.0 * skull.spacing)
    shifted = SkullImage(skull.mask, origin, skull.spacing, skull.direction, {})
    write_mask(shifted, tmp_path / "complete.nrrd")
    write_mask(defective, tmp_path / "cranial.nrrd")
    cases = [FakeCase("1", "complete", tmp_path / "complete.nrrd"), FakeCase("1", "cranial", tmp_path / "cranial.nrrd")]
    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    bundle.set_centroids({k: rng.normal(size=bundle.network.latent_size) for k in ("complete", "cranial", "facial")})
    with pytest.raises(SkullVAEError, match="origin .* differs .*not the same voxel grid"):
        evaluate(bundle, cases, resample="area", device="cpu", n_permutations=5)


def test_parse_id_spec_and_ranges():
    assert parse_id_spec("064-067") == ["064", "065", "066", "067"]
    assert parse_id_spec("000,003,010-011") == ["000", "003", "010", "011"]
    assert parse_id_spec(["001", "001-002"]) == ["001", "002"]
    assert parse_id_spec(None) is None
    with pytest.raises(SkullVAEError):
        parse_id_spec("079-064")
    with pytest.raises(SkullVAEError):
        parse_id_spec(",")
    assert id_ranges(["064", "065", "066", "070", "abc"]) == "064-066, 070, abc"


def test_summarise_counts_infinite_hd95_apart():
    nan = math.nan
    base = {
        "rec_dsc_model": 0.9,
        "rec_dsc_original": 0.9,
        "cmp_dsc_model": 0.8,
        "cmp_dsc_original": 0.8,
        "cmp_dsc_kept": 0.85,
        "implant_dsc": 0.5,
        "implant_bdsc": 0.6,
        "auto_defect": "cranial",
    }
    rows = [
        {**base, "case_id": "1", "label": "cranial", "implant_hd95_mm": 2.0},
        {**base, "case_id": "2", "label": "cranial", "implant_hd95_mm": math.inf, "auto_defect": "facial"},
        {**base, "case_id": "3", "label": "complete", "implant_hd95_mm": nan, "cmp_dsc_model": nan},
    ]
    table1, implant, classification = summarise(rows)
    assert implant["cranial"]["hd95_mm"] == {"mean": 2.0, "median": 2.0, "std": 0.0, "n": 2, "n_infinite": 1}
    assert classification["accuracy"] == 0.5 and classification["confusion"]["cranial"]["facial"] == 1
    assert table1["model_grid"]["rec"]["complete"] == pytest.approx(0.9)
    assert math.isnan(table1["model_grid"]["cmp"]["facial"])


# --- the CLI's case selection -----------------------------------------------------------------
def _cases(ids):
    return [FakeCase(i, lab, Path(f"{lab}/{i}.nrrd")) for i in ids for lab in ("complete", "cranial", "facial")]


def test_select_cases_defaults_to_ids_not_trained_on():
    from SkullVAELib.cli.evaluate import select_cases

    cases = _cases(["000", "001", "002", "003"])
    test, train, ids = select_cases(cases, None, None, ["000", "001"])
    assert ids == ["002", "003"] and len(test) == 6
    assert {c.case_id for c in train} == {"000", "001"}
    test, train, ids = select_cases(cases, "002-003", "000", ["000", "001"], max_cases=1)
    assert ids == ["002"] and {c.case_id for c in test} == {"002"} and {c.case_id for c in train} == {"000"}


@pytest.mark.parametrize(
    "test_spec,train_spec,recorded,message",
    [
        ("001-002", None, ["000", "001"], "refusing to evaluate completion on 1 case id"),
        (None, None, None, "does not record its training cases"),
        ("002", "001-002", None, "share 002"),
        ("090-091", None, None, "none of the test ids"),
    ],
)
def test_select_cases_refuses(test_spec, train_spec, recorded, message):
    from SkullVAELib.cli.evaluate import select_cases

    with pytest.raises(SkullVAEError, match=message):
        select_cases(_cases(["000", "001", "002"]), test_spec, train_spec, recorded)


# --- the CLI end to end ---------------------------------------------------------------------------
def _saved_bundle(tmp_path, evaluated, info_ids):
    bundle, _, _ = evaluated
    original = bundle.info
    bundle.info = {**original, "train_case_ids": info_ids}
    model = tmp_path / "model"
    try:
        bundle.save(model)
    finally:
        bundle.info = original
    return model


def test_cli_evaluate_writes_report(evaluated, tmp_path, capsys):
    from SkullVAELib.cli import main

    _, _, root = evaluated
    model = _saved_bundle(tmp_path, evaluated, ["000"])
    out = tmp_path / "report"
    argv = [
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(root),
        "--out",
        str(out),
        "--max-cases",
        "1",
        "--gammas",
        "1",
        "--permutations",
        "10",
        "--progress",
        "none",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "did not train on" in text and "Held-out (test) case ids: 064 " in text
    assert "training case ids | 000" in text
    assert (out / "fig7_completions_cranial.png").stat().st_size > 1000


def test_cli_evaluate_refuses_training_ids(evaluated, tmp_path, capsys):
    from SkullVAELib.cli import main

    _, _, root = evaluated
    model = _saved_bundle(tmp_path, evaluated, ["000", "064"])
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(model), "--data", str(root), "--out", str(out), "--test-ids", "064-065"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refusing to evaluate completion on 1 case id(s) the model trained on" in err
    assert not out.exists()
