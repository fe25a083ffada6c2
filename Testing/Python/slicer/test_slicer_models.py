"""The module's model selector logic and `SkullVAELogic().downloadModel` under slicer-core,
against the local HTTP server of test_models (a real child process does the download)."""

# ruff: noqa: F811  (pytest fixtures imported from test_models are used as parameters)
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("slicer")
pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "SkullVAE"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from SkullVAESlicerLib.logic import SkullVAECancelled, SkullVAELogic  # noqa: E402
from test_models import archive_bytes, bundle_dir, env, server, write_registry  # noqa: E402, F401


def test_download_then_list_and_resolve(env, server):  # noqa: F811
    logic = SkullVAELogic()
    before = {c.name: c for c in logic.listModels()}
    assert not before["tiny"].installed and before["tiny"].downloadable
    seen = []
    path = logic.downloadModel("tiny", onProgress=lambda stage, fraction, message: seen.append(stage))
    assert Path(path) == env / "models" / "tiny" and (Path(path) / "config.json").is_file()
    assert "download" in seen and "install" in seen
    after = {c.name: c for c in logic.listModels()}
    assert after["tiny"].installed and after["tiny"].label == "tiny"
    assert logic.modelPath("tiny") == path


def test_download_again_only_with_overwrite(env, server):  # noqa: F811
    from SkullVAESlicerLib.models import buildDownloadCommand

    assert buildDownloadCommand("tiny", overwrite=True)[-1] == "--overwrite"
    assert "--overwrite" not in buildDownloadCommand("tiny") and "--force" not in buildDownloadCommand("tiny", True)
    logic = SkullVAELogic()
    path = logic.downloadModel("tiny")
    assert logic.downloadModel("tiny") == path and len(server.requests) == 1  # installed: kept
    assert logic.downloadModel("tiny", overwrite=True) == path and len(server.requests) == 2
    with pytest.warns(DeprecationWarning, match="use overwrite"):
        assert logic.downloadModel("tiny", force=True) == path
    assert len(server.requests) == 3


def test_download_cancel_keeps_nothing_installed(env, server):  # noqa: F811
    server.chunk, server.chunk_delay = 1024, 0.05  # slow enough to cancel in the middle
    logic = SkullVAELogic()
    finished = []
    logic.downloadModel("tiny", waitForCompletion=False, onFinished=lambda p, e: finished.append((p, e)))
    deadline = time.monotonic() + 60
    while not server.requests and time.monotonic() < deadline:
        logic.pollDownload()
        time.sleep(0.05)
    logic.cancelDownload()
    while not logic.pollDownload() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert finished and finished[0][0] is None and isinstance(finished[0][1], SkullVAECancelled)
    assert not (env / "models" / "tiny").exists()
    assert not logic.isDownloading


def test_unreleased_model_and_unknown_name(env, server, archive_bytes, tmp_path, monkeypatch):  # noqa: F811
    reg = write_registry(tmp_path / "u.json", server.url + "/tiny-v1.zip", archive_bytes, released=False)
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(reg))
    logic = SkullVAELogic()
    choice = {c.name: c for c in logic.listModels()}["tiny"]
    assert not choice.downloadable and "not released" in choice.label
    with pytest.raises(ValueError, match="not released yet"):
        logic.downloadModel("tiny")
    with pytest.raises(ValueError, match="not installed"):
        logic.modelPath("tiny")


def _licensed_registry(tmp_path, server, archive_bytes, licence: str) -> Path:  # noqa: F811
    import json

    path = write_registry(tmp_path / "licensed.json", server.url + "/tiny-v1.zip", archive_bytes)
    doc = json.loads(path.read_text())
    doc["models"][0]["licence"] = licence
    path.write_text(json.dumps(doc))
    return path


def test_licensed_weights_are_downloaded_only_after_acceptance_per_model(
    env, server, archive_bytes, tmp_path, monkeypatch
):
    from SkullVAESlicerLib.models import LicenceNotAccepted

    licence = "CC BY-NC-SA 4.0 (derived from SkullFix): non-commercial research only"
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(_licensed_registry(tmp_path, server, archive_bytes, licence)))
    settings = {}  # the panel passes qt.QSettings: remembered for the user, per model
    logic = SkullVAELogic()
    logic.settings = settings
    assert logic.licenceToAccept("tiny") == licence
    assert {c.name: c for c in logic.listModels()}["tiny"].licence == licence
    with pytest.raises(LicenceNotAccepted, match="non-commercial"):
        logic.downloadModel("tiny")
    assert server.requests == [] and not (env / "models" / "tiny").exists()
    logic.acceptLicence("tiny")
    assert logic.licenceToAccept("tiny") is None
    assert Path(logic.downloadModel("tiny")).is_dir() and len(server.requests) == 1
    again = SkullVAELogic()
    again.settings = settings  # a later session with the same user settings: not asked again
    assert again.licenceToAccept("tiny") is None
    fresh = SkullVAELogic()  # another user (no settings): asked
    assert fresh.licenceToAccept("tiny") == licence
    changed = "CC BY-NC-ND 4.0: no derivatives"  # a changed licence is asked for again
    monkeypatch.setenv("SKULLVAE_REGISTRY", str(_licensed_registry(tmp_path, server, archive_bytes, changed)))
    assert again.licenceToAccept("tiny") == changed


def test_project_licence_needs_no_acceptance():
    from SkullVAESlicerLib.models import licenceNeedsAcceptance

    assert not licenceNeedsAcceptance("") and not licenceNeedsAcceptance("Apache-2.0 (phantoms only)")
    assert licenceNeedsAcceptance("CC BY-NC-SA 4.0")


def test_install_from_file_then_remove(env, archive_bytes, tmp_path):  # noqa: F811
    archive = tmp_path / "downloaded by hand.zip"
    archive.write_bytes(archive_bytes)
    logic = SkullVAELogic()
    seen = []
    path = logic.installModel(archive, name="mine", onProgress=lambda stage, fraction, message: seen.append(stage))
    assert Path(path) == env / "models" / "mine" and (Path(path) / "config.json").is_file()
    assert {c.name: c for c in logic.listModels()}["mine"].installed
    with pytest.raises(ValueError, match="already installed|exists|--overwrite"):
        logic.installModel(archive, name="mine")
    assert logic.removeModel("mine") == path
    assert not (env / "models" / "mine").exists() and "mine" not in {c.name for c in logic.listModels()}
    with pytest.raises(ValueError, match="not installed"):
        logic.removeModel("mine")
    with pytest.raises(ValueError, match="no such file"):
        logic.installModel(tmp_path / "missing.zip")
