"""The implant evaluation protocol (issue 9): cases per defect type, scores, bootstrap summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation import implants as implant_eval
from SkullVAELib.io.image import write_mask


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    """A SkullFix-layout folder with one complete phantom (id 900) and no defective files."""
    root = tmp_path_factory.mktemp("phantom_data")
    (root / "complete_skull").mkdir()
    write_mask(make_phantom(3, (96, 96, 72), (2.2, 2.2, 2.2)), root / "complete_skull" / "900.nrrd")
    return root


def test_protocol_scores_random_vault_defects_with_the_rim_fit(phantom_root):
    seen = []
    rows = implant_eval.run_protocol(
        phantom_root, ["900"], ["rimfit"], ["cranial", "vault"], seeds=[0, 1], progress=lambda *a: seen.append(a[1])
    )
    assert seen and all(0.0 <= f < 1.0 for f in seen) and seen == sorted(seen)  # a fraction of the whole run
    # no defective_skull/900: no SkullFix cranial row; two vault seeds
    assert [(r["defect"], r["seed"]) for r in rows] == [("vault", 0), ("vault", 1)]
    for row in rows:
        assert row["empty"] == 0.0
        assert row["dsc"] > 0.6 and row["skull_dsc"] > 0.95
        assert 0 < row["volume_ml"] < 3 * row["true_volume_ml"]
    # the same seed gives the same defect and the same numbers
    again = implant_eval.run_protocol(phantom_root, ["900"], ["rimfit"], ["vault"], seeds=[1])
    assert again[0]["dsc"] == rows[1]["dsc"]


def test_irregular_defects_are_drawn_like_vault_ones_with_another_outline(phantom_root):
    """``irregular``: cranial_defect(style="irregular") with case_seed(seed, ID), as ``vault`` is skullbreak's."""
    from SkullVAELib.data.defects import case_seed, cranial_defect
    from SkullVAELib.io.image import read_skull

    cases = list(implant_eval.defect_cases(phantom_root, ["900"], ["vault", "irregular"], seeds=[0, 1]))
    assert [(c.defect, c.seed) for c in cases] == [("vault", 0), ("vault", 1), ("irregular", 0), ("irregular", 1)]
    complete = read_skull(phantom_root / "complete_skull" / "900.nrrd", kind="binary")
    for case in cases[2:]:
        _, implant = cranial_defect(complete, case_seed(case.seed, "900"), style="irregular")
        assert np.array_equal(case.implant, implant.mask) and case.implant.any()
        assert np.array_equal(case.defective.mask | case.implant, case.complete)
    assert not np.array_equal(cases[0].implant, cases[2].implant)  # the same site, another shape


def test_a_geometric_method_on_a_facial_defect_is_an_honest_empty_row(phantom_root):
    (row,) = implant_eval.run_protocol(phantom_root, ["900"], ["rimfit"], ["facial"], seeds=[0])
    assert row["empty"] == 1.0 and row["dsc"] == 0.0 and math.isinf(row["hd95"])
    assert row["source"] == "none" and any("facial" in m for m in row["messages"])


def test_model_methods_need_a_model_and_bad_names_are_refused(phantom_root, tmp_path):
    from SkullVAELib.workflows.implants import evaluate_implants

    with pytest.raises(SkullVAEError, match="--model"):
        evaluate_implants([phantom_root], tmp_path / "r", ["900"], ["rimfit+model"], ["vault"])
    with pytest.raises(SkullVAEError, match="unknown implant source"):
        implant_eval.run_protocol(phantom_root, ["900"], ["magic"], ["vault"])
    with pytest.raises(SkullVAEError, match="unknown defect"):
        list(implant_eval.defect_cases(phantom_root, ["900"], ["nasal"]))
    with pytest.raises(SkullVAEError, match="no complete_skull"):
        list(implant_eval.defect_cases(phantom_root, ["901"], ["vault"]))


def test_summary_has_mean_median_bootstrap_interval_and_counts():
    rng = np.random.default_rng(0)
    rows = [
        {"method": "rimfit", "defect": "cranial", "dsc": d, "bdsc": d, "hd95": h, "skull_dsc": 0.98, "empty": 0.0}
        for d, h in zip(rng.uniform(0.8, 0.95, 12), rng.uniform(1, 3, 12), strict=True)
    ]
    rows.append(
        {
            "method": "rimfit",
            "defect": "cranial",
            "dsc": 0.0,
            "bdsc": 0.0,
            "hd95": math.inf,
            "skull_dsc": 0.9,
            "empty": 1.0,
        }
    )
    summary = implant_eval.summarise(rows)
    entry = summary[("rimfit", "cranial")]
    assert entry["n"] == 13 and entry["n_empty"] == 1
    dsc = entry["dsc"]
    assert dsc["ci_low"] < dsc["mean"] < dsc["ci_high"]
    assert dsc["median"] == pytest.approx(np.median([r["dsc"] for r in rows]))
    assert entry["hd95"]["n_infinite"] == 1 and math.isfinite(entry["hd95"]["mean"])
    table = implant_eval.markdown_table(summary, "val")
    assert "| val | rimfit | cranial | 13 |" in table and "1 inf" in table


def test_cli_evaluate_implants_only_writes_the_ablation_files(phantom_root, tmp_path, capsys):
    from SkullVAELib.cli import main

    out = tmp_path / "report"
    argv = ["evaluate", "--data", str(phantom_root), "--out", str(out), "--test-ids", "900"]
    code = main([*argv, "--implants", "rimfit", "--defects", "vault", "--defect-seeds", "0", "--implants-only"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "rimfit" in stdout and "vault" in stdout and "0/1 empty" in stdout
    assert (out / "implants.md").is_file() and (out / "implants.csv").is_file() and (out / "implants.json").is_file()
    assert "| rimfit | vault | 1 |" in (out / "implants.md").read_text()
    # a vae method without a model, and a missing --test-ids, are one-line errors with exit code 2
    assert main([*argv, "--implants", "model", "--implants-only"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(phantom_root), "--out", str(out), "--implants", "rimfit"]) == 2
    assert "--test-ids" in capsys.readouterr().err


def test_model_methods_run_with_a_model_and_the_rim_fit_takes_over_cranial_holes(phantom_root):
    from SkullVAELib.bundle.folder import ModelFolder
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import PRESETS

    bundle = new_bundle(PRESETS["test"], aggregated=True, seed=0)  # untrained
    rng = np.random.default_rng(0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": rng.normal(size=8), "facial": rng.normal(size=8)})
    folder = ModelFolder.from_parts(vae=bundle)
    rows = implant_eval.run_protocol(phantom_root, ["900"], ["model", "rimfit+model"], ["vault"], [0], folder=folder)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"model", "rimfit+model"}
    assert by_method["rimfit+model"]["dsc"] > 0.6 > by_method["model"]["dsc"]
    assert by_method["rimfit+model"]["source"] == "rimfit"


@pytest.mark.parametrize("wrong", ["shape", "spacing", "origin"])
def test_an_implant_file_on_another_grid_is_one_line_before_the_work(tmp_path, capsys, monkeypatch, wrong):
    from SkullVAELib.cli import main
    from SkullVAELib.io.image import SkullImage

    def write(mask, folder, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
        (tmp_path / folder).mkdir(exist_ok=True)
        write_mask(SkullImage(mask, np.asarray(origin), np.asarray(spacing)), tmp_path / folder / "000.nrrd")

    i, j, k = np.mgrid[:24, :24, :24]
    shell = np.abs(np.sqrt((i - 12) ** 2 + (j - 12) ** 2 + (k - 12) ** 2) - 9) < 1.5
    hole = shell.copy()
    hole[18:, 8:16, 8:16] = False
    write(shell, "complete_skull")
    write(hole, "defective_skull")
    implant = shell & ~hole
    write(implant[:, :, :20] if wrong == "shape" else implant, "implant",
          spacing=(1.0, 1.0, 1.5) if wrong == "spacing" else (1.0, 1.0, 1.0),
          origin=(0.0, 0.0, 2.0) if wrong == "origin" else (0.0, 0.0, 0.0))  # fmt: skip
    monkeypatch.setattr(implant_eval, "predict", lambda *a: pytest.fail("the work started"))
    argv = ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--test-ids", "000"]
    assert main([*argv, "--implants", "rimfit", "--defects", "cranial", "--implants-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "implant" / "000.nrrd") in err[0] and wrong in err[0]


def test_implants_only_honours_max_cases_and_refuses_the_papers_options(tmp_path, capsys, monkeypatch):
    import SkullVAELib.workflows.implants as implants_workflow
    from SkullVAELib.cli import main

    asked = []

    def fake(data, out, test_ids, *args, **kwargs):
        asked.append(list(test_ids))
        return {}, out / "implants.md"

    monkeypatch.setattr(implants_workflow, "evaluate_implants", fake)
    argv = ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--test-ids", "900-903"]
    argv += ["--implants", "rimfit", "--implants-only"]
    assert main([*argv, "--max-cases", "2"]) == 0
    assert asked == [["900", "901"]]
    for extra in (["--gammas", "0,1"], ["--train-ids", "000"], ["--permutations", "10"], ["--resample", "nearest"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and extra[0] in err[0] and "--implants-only" in err[0]
    assert asked == [["900", "901"]]
