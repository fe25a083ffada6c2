"""Issue 25 §4: a refiner file is checked before its network is allocated, and its weights must be finite.

A 1 KB file whose stored settings ask for a huge U-Net (14.5 GB in the report) is refused from its
settings alone, in one line, allocating nothing; a refiner whose weights hold NaN is refused.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.learned.config import REFINER_FORMAT, RefinerConfig, load_refiner, save_refiner
from SkullVAELib.implant.residual.config import RESIDUAL_FORMAT, ResidualConfig, load_residual

pytestmark = pytest.mark.usefixtures("default_limits")

SMALL = RefinerConfig(crop_shape=(16, 16, 16), channels=(2, 4), res_units=0)


def _network(cfg: RefinerConfig) -> torch.nn.Module:
    if hasattr(cfg, "network"):
        return cfg.network()
    from SkullVAELib.implant.learned.network import refiner_network  # the older signature

    return refiner_network(cfg)


def _file_asking_for(tmp_path, **settings):
    config = {**json.loads(SMALL.to_json()), **settings}
    path = tmp_path / "huge.safetensors"
    save_file({"w": torch.zeros(4)}, str(path), metadata={"format": REFINER_FORMAT, "config": json.dumps(config)})
    assert path.stat().st_size < 1024
    return path


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"channels": [2048, 2048, 2048, 2048, 2048], "crop_shape": [256, 256, 256]}, "GB limit"),
        ({"channels": [16, 32], "crop_shape": [4096, 4096, 4096]}, "exceeds the limit"),
        ({"channels": [10**6, 10**6]}, "implausible refiner network"),
    ],
)
def test_a_tiny_file_asking_for_a_huge_refiner_is_refused_before_allocating(tmp_path, settings, expected):
    path = _file_asking_for(tmp_path, **settings)
    with pytest.raises(SkullVAEError, match=expected) as info:
        load_refiner(path)
    assert "\n" not in str(info.value) and path.name in str(info.value)


def test_a_refiner_with_nan_weights_is_refused(tmp_path):
    network = _network(SMALL)
    with torch.no_grad():
        next(p for p in network.parameters() if p.numel() > 1).view(-1)[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_refiner(path, network, SMALL)
    with pytest.raises(SkullVAEError, match="NaN or infinite"):
        load_refiner(path)


def test_a_small_finite_refiner_still_loads(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_refiner(path, _network(SMALL), SMALL)
    network, cfg, _ = load_refiner(path)
    assert cfg.channels == SMALL.channels and not network.training


def _with(cfg, **settings) -> str:
    return json.dumps({**json.loads(cfg.to_json()), **settings})


@pytest.mark.parametrize(
    ("kind", "config", "info"),
    [
        ("refiner", "[]", "{}"),  # JSON, but not the settings' object
        ("refiner", "null", "{}"),
        ("refiner", _with(SMALL, channels=[4]), "{}"),  # a U-Net of one level
        ("refiner", _with(SMALL, crop_offset_mm=[1.0, 2.0]), "{}"),  # two offsets for three axes
        ("refiner", SMALL.to_json(), "[1]"),  # the training info is not an object
        ("residual", "[]", "{}"),
        ("residual", _with(ResidualConfig(crop_shape=(8, 8, 8), channels=(2, 4)), channels=[4]), "{}"),
    ],
)
def test_stored_settings_that_parse_but_make_no_network_are_one_line_errors(tmp_path, kind, config, info):
    """Settings that are valid JSON yet no network of this kind (a hand-edited or damaged file) are
    refused in one line naming the file: not a traceback, nor a crash later at inference."""
    fmt, load = (REFINER_FORMAT, load_refiner) if kind == "refiner" else (RESIDUAL_FORMAT, load_residual)
    path = tmp_path / f"odd-{kind}.safetensors"
    tensors = {k: v.contiguous() for k, v in _network(SMALL).state_dict().items()}
    save_file(tensors, str(path), metadata={"format": fmt, "config": config, "info": info})
    with pytest.raises(SkullVAEError, match="stored settings are missing or damaged") as caught:
        load(path)
    assert "\n" not in str(caught.value) and path.name in str(caught.value)
