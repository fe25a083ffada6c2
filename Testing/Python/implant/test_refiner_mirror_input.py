"""The facial refiner's mirror input (issue 24 §4): the face crop's left-right mirror as a second input
channel, so that the intact side of a defect off the midline reaches the voxels of the hole."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from SkullVAELib.cli import main
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.learned.config import RefinerConfig, load_refiner, refiner_memory_bytes, save_refiner
from SkullVAELib.implant.learned.infer import learned_implant
from SkullVAELib.implant.learned.network import MirroredInput, refiner_network
from SkullVAELib.io.image import write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
MIRROR = RefinerConfig(
    spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8), mirror_input=True
)


def recording(net: MirroredInput) -> list[torch.Tensor]:
    """The inputs ``net``'s inner network will see (a forward pre-hook on it)."""
    seen: list[torch.Tensor] = []
    net.net.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    return seen


def test_the_second_channel_is_the_first_mirrored_left_right():
    net = MIRROR.network()
    recorded = recording(net)
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        out = net(x)
    (seen,) = recorded
    assert out.shape == (2, 1, 32, 32, 32) and seen.shape == (2, 2, 32, 32, 32)
    torch.testing.assert_close(seen[:, :1], x)
    torch.testing.assert_close(seen[:, 1:], x.flip(2))  # X: the grid's L-R axis
    assert not torch.equal(seen[:, 1:], x.flip(3))


def test_a_mirror_network_reads_two_channels_and_keeps_its_weights_under_net():
    net = MIRROR.network()
    assert isinstance(net, MirroredInput)
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 2
    assert all(k.startswith("net.") for k in net.state_dict())
    plain = replace(MIRROR, mirror_input=False).network()
    assert refiner_memory_bytes(MIRROR) > refiner_memory_bytes(replace(MIRROR, mirror_input=False))
    assert not any(k.startswith("net.") for k in plain.state_dict())  # old weights keep their names
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="one-channel"):
        refiner_network((4, 8), in_channels=3, mirror_input=True)


def test_the_mirror_setting_round_trips_with_its_weights_and_old_weights_read_without_it(tmp_path):
    torch.manual_seed(0)
    net = MIRROR.network().eval()
    save_refiner(tmp_path / "r.safetensors", net, MIRROR)
    loaded, cfg, _ = load_refiner(tmp_path / "r.safetensors")
    assert cfg.mirror_input
    x = (torch.rand(1, 1, 32, 32, 32) > 0.6).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=2e-2, rtol=0)  # weights stored as float16
    old = {k: v for k, v in json.loads(MIRROR.to_json()).items() if k != "mirror_input"}
    assert RefinerConfig.from_json(json.dumps(old)).mirror_input is False


@pytest.mark.parametrize("test_time_mirror", [False, True])
def test_inference_hands_the_network_each_crop_and_its_mirror(test_time_mirror):
    skull = make_phantom(5, SHAPE, SPACING)
    cfg = replace(MIRROR, test_time_mirror=test_time_mirror)
    net = cfg.network().eval()
    recorded = recording(net)
    result = learned_implant(skull, net, cfg, "cpu")
    assert len(recorded) == (2 if test_time_mirror else 1)
    for seen in recorded:
        assert seen.shape[1] == 2 and seen[:, :1].any()
        torch.testing.assert_close(seen[:, 1:], seen[:, :1].flip(2))
    if test_time_mirror:  # the mirrored pass sees the same two channels, swapped
        torch.testing.assert_close(recorded[1][:, :1], recorded[0][:, 1:])
    assert result.implant.shape == skull.mask.shape and not (result.implant & skull.mask.astype(bool)).any()


def test_train_refiner_mirror_input_trains_and_stores_it(tmp_path, capsys):
    data = tmp_path / "data" / "complete_skull"
    data.mkdir(parents=True)
    for seed in (1, 2):
        write_mask(make_phantom(seed, SHAPE, SPACING), data / f"{seed:03d}.nrrd")
    out = tmp_path / "mirror"
    argv = ["train-refiner", "--data", str(tmp_path / "data"), "--out", str(out), "--train-ids", "001"]
    argv += ["--val-ids", "002", "--spacing", "4", "--crop", "32,32,32", "--channels", "4,8,16", "--progress", "none"]
    assert main([*argv, "--steps", "2", "--val-every", "1", "--mirror-input"]) == 0, capsys.readouterr().err
    net, cfg, info = load_refiner(out / "refiner.safetensors")
    assert cfg.mirror_input and isinstance(net, MirroredInput) and info["train"]["steps"] == 2
    assert np.isfinite(np.array([float(p.detach().abs().sum()) for p in net.parameters()])).all()
