"""tools/set_weights_setting.py: a copy of a weights file with a stored setting changed."""

import importlib.util
from pathlib import Path

import torch

from SkullVAELib.implant.learned.config import RefinerConfig, load_refiner, save_refiner

TOOL = Path(__file__).resolve().parents[3] / "tools" / "set_weights_setting.py"


def _tool():
    spec = importlib.util.spec_from_file_location("set_weights_setting", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_copy_with_test_time_mirroring_and_the_same_weights(tmp_path, capsys):
    cfg = RefinerConfig(crop_shape=(16, 16, 16), channels=(4, 8))
    save_refiner(tmp_path / "a.safetensors", cfg.network(), cfg)
    tool = _tool()
    assert tool.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "test_time_mirror=true"]) == 0
    a, cfg_a, _ = load_refiner(tmp_path / "a.safetensors")
    b, cfg_b, _ = load_refiner(tmp_path / "b.safetensors")
    assert not cfg_a.test_time_mirror and cfg_b.test_time_mirror and cfg_b.channels == (4, 8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    # an unknown setting and an existing target are refused; nothing is written
    assert tool.main([str(tmp_path / "a.safetensors"), str(tmp_path / "c.safetensors"), "bogus=1"]) == 2
    assert tool.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"), "threshold=0.4"]) == 2
    assert not (tmp_path / "c.safetensors").exists()
    assert "no setting 'bogus'" in capsys.readouterr().err
