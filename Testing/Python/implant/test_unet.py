"""The learned sources' plain-torch U-Net is MONAI's UNet layer for layer: same parameter names
and shapes, same output for the same weights, and building or loading it does not import MONAI."""

import subprocess
import sys

import pytest
import torch
from monai.networks.nets import UNet as MonaiUNet

from SkullVAELib.implant.learned.unet import UNet


def _monai(cin, cout, channels, res_units):
    return MonaiUNet(
        spatial_dims=3,
        in_channels=cin,
        out_channels=cout,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        norm="instance",
    )


@pytest.mark.parametrize(
    ("cin", "cout", "channels", "res_units"),
    [
        (1, 1, (4, 8), 1),
        (1, 1, (4, 8, 16), 1),
        (3, 1, (4, 8, 16, 32), 1),
        (1, 4, (4, 8, 16, 32, 64), 1),
        (1, 1, (4, 8, 16), 0),
        (2, 3, (4, 8, 16), 2),
    ],
)
def test_same_parameters_and_output_as_monai(cin, cout, channels, res_units):
    torch.manual_seed(0)
    reference = _monai(cin, cout, channels, res_units).eval()
    ours = UNet(cin, cout, channels, res_units).eval()
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs
    ours.load_state_dict(reference.state_dict(), strict=True)
    side = max(16, 2 ** len(channels))  # instance norm needs more than one voxel at the bottom
    x = torch.randn(2, cin, side, side, side)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_weights_load_the_other_way():
    torch.manual_seed(1)
    ours = UNet(1, 1, (4, 8, 16), 1)
    reference = _monai(1, 1, (4, 8, 16), 1)
    reference.load_state_dict(ours.state_dict(), strict=True)


def test_one_level_is_refused():
    with pytest.raises(ValueError, match="two levels"):
        UNet(1, 1, (8,))


def test_refiner_network_does_not_import_monai():
    code = (
        "import sys\n"
        "from SkullVAELib.implant.learned.config import RefinerConfig\n"
        "RefinerConfig(crop_shape=(16, 16, 16), channels=(4, 8, 16), output_head=True).network()\n"
        "from SkullVAELib.implant.residual.config import ResidualConfig\n"
        "ResidualConfig().network()\n"
        "print('monai' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("make", ["refiner", "residual"])
def test_the_smallest_crop_the_settings_accept_runs_and_one_voxel_deep_is_refused(make):
    """A crop of just the depth step (16 for 5 levels) on all three sides leaves the deepest level
    one voxel, which instance norm cannot normalise: refused with the settings, in one line, not
    a crash of the network at the first training step or inference."""
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.implant.learned.config import RefinerConfig
    from SkullVAELib.implant.residual.config import ResidualConfig

    settings = RefinerConfig if make == "refiner" else ResidualConfig
    channels = (2, 2, 2, 2, 2)
    with pytest.raises(SkullVAEError, match=r"multiples of 16 \(the U-Net depth\), not all 16"):
        settings(crop_shape=(16, 16, 16), channels=channels)
    cfg = settings(crop_shape=(32, 16, 16), channels=channels)  # the deepest level: 2 x 1 x 1
    with torch.no_grad():
        out = cfg.network().eval()(torch.zeros(1, cfg.in_channels, *cfg.crop_shape))
    assert out.shape == (1, 1, *cfg.crop_shape)
