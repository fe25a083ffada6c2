"""Model bundle: round trip, regular vs aggregated, completion data, and every corrupt case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from SkullVAELib.bundle.model_bundle import ModelBundle, new_bundle
from SkullVAELib.core.config import NetworkConfig, network_preset
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.vae.networks import VAE

CFG = network_preset("test")


def _randomise_batchnorm(bundle: ModelBundle) -> None:
    gen = torch.Generator().manual_seed(5)
    for part in (bundle.encoder, bundle.decoder, bundle.decoupled_decoder):
        for m in part.modules() if part is not None else ():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


def _outputs(bundle: ModelBundle, x: torch.Tensor):
    with torch.no_grad():
        mu, logvar = bundle.encoder(x)
        return mu, logvar, bundle.decoder(mu), bundle.completion_decoder(mu)


@pytest.fixture
def x():
    return torch.rand(2, 1, *CFG.grid, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("aggregated", [False, True])
def test_round_trip_same_outputs(tmp_path, x, aggregated):
    bundle = new_bundle(CFG, aggregated=aggregated, seed=1, info={"beta": 100.0, "epochs": {"stage1": 3}})
    _randomise_batchnorm(bundle)
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.kind == ("aggregated" if aggregated else "regular")
    assert loaded.network == CFG
    assert loaded.info["beta"] == 100.0 and loaded.info["epochs"] == {"stage1": 3}
    assert not loaded.encoder.training and not loaded.completion_decoder.training
    for a, b in zip(_outputs(bundle, x), _outputs(loaded, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (loaded.completion_decoder is loaded.decoupled_decoder) == aggregated
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        ["config.json", "encoder.safetensors", "decoder.safetensors"]
        + (["decoupled_decoder.safetensors"] if aggregated else [])
    )


def test_from_vae_and_two_channel_heads(tmp_path, x):
    torch.manual_seed(0)
    vae = VAE(CFG, out_channels=2, extra_relu=True).eval()
    bundle = ModelBundle.from_vae(vae, info={"seed": 0})
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.decoder.out_channels == 2 and loaded.decoder.extra_relu
    torch.testing.assert_close(_outputs(bundle, x), _outputs(loaded, x))


def test_centroids_and_dev(tmp_path):
    bundle = new_bundle(CFG, aggregated=True, seed=2)
    with pytest.raises(SkullVAEError, match="run skullvae fit-completion"):
        bundle.dev("cranial")
    c = {"complete": np.arange(8.0), "cranial": np.ones(8), "facial": np.full(8, -1.0)}
    bundle.set_centroids(c, {"counts": {"complete": 3}})
    np.testing.assert_allclose(bundle.dev("cranial"), np.arange(8.0) - 1)
    np.testing.assert_allclose(bundle.dev("facial"), np.arange(8.0) + 1)
    with pytest.raises(SkullVAEError, match="no centroid for defect class 'nasal'"):
        bundle.dev("nasal")
    bundle.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "completion.json").read_text())
    assert doc["dev"]["cranial"] == (np.arange(8.0) - 1).tolist()
    loaded = ModelBundle.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.dev("facial"), bundle.dev("facial"))
    assert loaded.defect_classes == ["cranial", "facial"]
    assert loaded.completion_info == {"counts": {"complete": 3}}
    # Re-saving a bundle without centroids removes the stale completion.json.
    new_bundle(CFG, seed=3).save(tmp_path / "m")
    assert not (tmp_path / "m" / "completion.json").exists()
    assert not (tmp_path / "m" / "decoupled_decoder.safetensors").exists()
    assert ModelBundle.load(tmp_path / "m").centroids is None


def test_save_completion_into_existing_bundle(tmp_path):
    bundle = new_bundle(CFG, seed=2)
    bundle.save(tmp_path / "m")
    bundle.set_centroids({"complete": np.zeros(8), "cranial": np.ones(8)})
    bundle.save_completion(tmp_path / "m")
    np.testing.assert_allclose(ModelBundle.load(tmp_path / "m").dev("cranial"), -np.ones(8))


@pytest.mark.parametrize(
    "centroids, match",
    [
        ({"cranial": np.zeros(8)}, "'complete' class"),
        ({"complete": np.zeros(7)}, "8 finite numbers"),
        ({"complete": np.full(8, np.nan)}, "8 finite numbers"),
    ],
)
def test_bad_centroids(centroids, match):
    with pytest.raises(SkullVAEError, match=match):
        new_bundle(CFG).set_centroids(centroids)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "m"
    new_bundle(CFG, aggregated=True, seed=4).save(folder)
    return folder


def _load_error(folder) -> str:
    with pytest.raises(SkullVAEError) as info:
        ModelBundle.load(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_not_a_folder(tmp_path):
    f = tmp_path / "model.pth"
    f.write_bytes(b"x")
    assert "not a SkullVAE model bundle (not a folder)" in _load_error(f)
    assert "not a folder" in _load_error(tmp_path / "missing")


def test_missing_config(tmp_path):
    assert "not a SkullVAE model bundle (no config.json)" in _load_error(tmp_path)


def test_truncated_weights(saved):
    path = saved / "decoder.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    msg = _load_error(saved)
    assert "decoder.safetensors" in msg and "corrupt or truncated" in msg


def test_garbage_weights(saved):
    (saved / "encoder.safetensors").write_bytes(b"\x00garbage" * 50)
    msg = _load_error(saved)
    assert "encoder.safetensors" in msg and "corrupt or truncated" in msg


def test_missing_weights(saved):
    (saved / "decoupled_decoder.safetensors").unlink()
    assert "decoupled_decoder.safetensors: missing weights file" in _load_error(saved)


def test_foreign_safetensors(saved):
    save_file({"model.layer1.weight": torch.zeros(3, 3)}, str(saved / "encoder.safetensors"))
    msg = _load_error(saved)
    assert "encoder.safetensors" in msg and "not the weights of this model part" in msg


def test_swapped_parts(saved):
    (saved / "encoder.safetensors").write_bytes((saved / "decoder.safetensors").read_bytes())
    assert "not the weights of this model part" in _load_error(saved)


def test_config_grid_does_not_match_weights(saved):
    path = saved / "config.json"
    doc = json.loads(path.read_text())
    doc["network"]["grid"] = [64, 32, 32]
    path.write_text(json.dumps(doc))
    msg = _load_error(saved)
    assert "weights do not match config.json (grid 64x32x32" in msg and "has shape" in msg


def test_config_latent_does_not_match_weights(saved):
    path = saved / "config.json"
    doc = json.loads(path.read_text())
    doc["network"]["latent_size"] = 4
    path.write_text(json.dumps(doc))
    assert "weights do not match config.json" in _load_error(saved)


def test_config_invalid_grid(saved):
    path = saved / "config.json"
    doc = json.loads(path.read_text())
    doc["network"]["grid"] = [30, 32, 32]
    path.write_text(json.dumps(doc))
    msg = _load_error(saved)
    assert "config.json: invalid network in config" in msg and "cannot be divided" in msg


def test_unsupported_format_version(saved):
    path = saved / "config.json"
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    assert "unsupported model format version 99" in _load_error(saved)


def test_config_not_json(saved):
    (saved / "config.json").write_text("{not json")
    assert "config.json: cannot read JSON" in _load_error(saved)


def test_config_foreign_json(saved):
    (saved / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "not a SkullVAE model config" in _load_error(saved)


def test_corrupt_completion(saved):
    (saved / "completion.json").write_text(json.dumps({"centroids": {"complete": [1.0, 2.0]}}))
    assert "completion.json: invalid completion data" in _load_error(saved)


def test_save_over_a_file_is_an_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SkullVAEError, match="not a folder"):
        new_bundle(CFG).save(f)


def test_info_json_conversion(tmp_path):
    info = {"beta": np.float32(100.0), "loss": float("nan"), "seeds": np.array([1, 2]), "grid": (1, 2)}
    new_bundle(CFG, info=info).save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.info == {"beta": 100.0, "loss": None, "seeds": [1, 2], "grid": [1, 2]}
    with pytest.raises(SkullVAEError, match="JSON cannot store"):
        new_bundle(CFG, info={"x": object()}).save(tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_other_network_shapes_round_trip(tmp_path):
    cfg = NetworkConfig(grid=(32, 16, 16), channels=(4, 8), latent_size=3)
    new_bundle(cfg, aggregated=True, seed=0).save(tmp_path / "m")
    assert ModelBundle.load(tmp_path / "m").network == cfg
