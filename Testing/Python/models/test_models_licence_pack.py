"""`models pack` never replaces a file without --overwrite nor writes inside the bundle it packs; the
registry's licence is shown on download and in `models info`/`list`; the card's HD95 median counts the
infinite cases (empty predictions); `models info` of a path that is nothing is one line."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from SkullVAELib.cli import main
from SkullVAELib.models.archive import pack_bundle
from SkullVAELib.models.card import metrics_from_summary

LICENCE = "CC BY-NC-SA 4.0: research only (test entry)"


# fixture tiny_model: Testing/Python/conftest.py


def _one_line(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_models_pack_refuses_an_existing_file_without_overwrite(tiny_model, tmp_path, capsys):
    out = tmp_path / "release.zip"
    out.write_bytes(b"an earlier release")
    line = _one_line(capsys, "models", "pack", tiny_model, "--out", out)
    assert str(out) in line and "--overwrite" in line and out.read_bytes() == b"an earlier release"
    assert main(["models", "pack", str(tiny_model), "--out", str(out), "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("inside", ["config.json", "new.zip"])
def test_models_pack_never_writes_inside_the_bundle(tiny_model, capsys, inside):
    before = {p: p.read_bytes() for p in tiny_model.rglob("*") if p.is_file()}
    line = _one_line(capsys, "models", "pack", tiny_model, "--out", tiny_model / inside, "--overwrite")
    assert "inside the bundle" in line
    assert {p: p.read_bytes() for p in tiny_model.rglob("*") if p.is_file()} == before


def test_the_registry_licence_is_shown_on_download_info_and_list(tiny_model, tmp_path, monkeypatch, capsys):
    archive = pack_bundle(tiny_model, tmp_path / "tiny-v1.zip", top="tiny")
    entry = {"name": "tiny", "version": "1", "released": True, "url": "file://" + str(archive),
             "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "size": archive.stat().st_size,
             "licence": LICENCE}  # fmt: skip
    (tmp_path / "models.json").write_text(json.dumps({"format": "skullvae-model-registry", "models": [entry]}))
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(tmp_path / "models.json"))
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    assert main(["models", "download", "tiny", "--progress", "none"]) == 0
    assert f"licence: {LICENCE}" in capsys.readouterr().out
    assert main(["models", "info", "tiny"]) == 0
    assert LICENCE in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert LICENCE in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["licence"] == LICENCE


def test_models_info_of_nothing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    line = _one_line(capsys, "models", "info", "does/not-exist")
    assert "does/not-exist" in line


def _card_hd95(values: list[float]) -> object:
    from SkullVAELib.evaluation.report import _jsonable
    from SkullVAELib.evaluation.table1 import _summary

    implant = {"cranial": {"hd95_mm": _summary(values)}}
    summary = _jsonable({"test_ids": [f"{i:03d}" for i in range(len(values))], "implant": implant})
    return metrics_from_summary(summary)["cranial implant HD95 mm (median)"]


def test_the_card_hd95_median_counts_the_infinite_cases():
    assert _card_hd95([3.0, 4.0, 5.0]) == 4.0
    assert _card_hd95([3.0, 4.0, math.inf, math.inf, math.inf]).startswith("inf (3 of 5 cases infinite")
    assert (
        _card_hd95([3.0, 4.0, 5.0, 6.0, math.inf])
        == "4.5 over the 4 finite cases (1 of 5 cases infinite: empty prediction)"
    )
