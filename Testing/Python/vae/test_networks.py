"""Networks: shapes, parameter counts against MONAI's VarAutoEncoder, heads, bad shapes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.layers import Norm
from monai.networks.nets import VarAutoEncoder

from SkullVAELib.core.config import NetworkConfig, network_preset
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.vae.networks import VAE, Decoder, Encoder, count_parameters, reparameterize

TEST_CFG = network_preset("test")  # 32³, channels (8, 16, 32, 64), d = 8


def reference_vae(cfg: NetworkConfig, out_channels: int = 2) -> VarAutoEncoder:
    return VarAutoEncoder(
        spatial_dims=3,
        in_shape=(1, *cfg.grid),
        out_channels=out_channels,
        channels=cfg.channels,
        strides=(2,) * cfg.depth,
        latent_size=cfg.latent_size,
        norm=Norm.BATCH,
        num_res_units=0,
    )


def test_shapes_and_range():
    torch.manual_seed(0)
    vae = VAE(TEST_CFG).eval()
    x = torch.rand(2, 1, *TEST_CFG.grid)
    prob, mu, logvar, z = vae(x, sample=False)
    assert prob.shape == (2, 1, 32, 32, 32)
    assert mu.shape == logvar.shape == z.shape == (2, 8)
    assert torch.equal(z, mu)
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    _, _, _, z_sampled = vae(x, sample=True)
    assert not torch.equal(z_sampled, mu)


def test_paper_preset_parameter_count_matches_monai():
    # Built at 256×256×128; only parameter tensors are allocated (no forward pass).
    cfg = network_preset("paper")
    ref = count_parameters(reference_vae(cfg))
    assert ref == 4_228_909
    assert count_parameters(VAE(cfg, out_channels=2)) == ref
    # One output channel: the last ConvTranspose3d(32→1) instead of (32→2): 32·27 + 1 fewer.
    assert count_parameters(VAE(cfg, out_channels=1)) == ref - (32 * 27 + 1)
    # The authors' retrained decoder: its last block keeps BatchNorm3d(2) + PReLU (4 + 1 more).
    assert count_parameters(Decoder(cfg, out_channels=2, extra_relu=True)) == (
        count_parameters(Decoder(cfg, out_channels=2)) + 5
    )


@pytest.mark.parametrize("cfg", [TEST_CFG, NetworkConfig(grid=(64, 32, 32), channels=(4, 8, 8), latent_size=4)])
def test_same_layers_as_monai(cfg):
    ours = [tuple(t.shape) for t in VAE(cfg, out_channels=2).state_dict().values()]
    theirs = [tuple(t.shape) for t in reference_vae(cfg).state_dict().values()]
    assert sorted(ours) == sorted(theirs)


def test_two_channel_head_is_softmax_foreground():
    torch.manual_seed(1)
    dec = Decoder(TEST_CFG, out_channels=2).eval()
    z = torch.randn(3, 8)
    expected = torch.softmax(dec.head(z), dim=1)[:, 1:2]
    torch.testing.assert_close(dec(z), expected, atol=1e-6, rtol=1e-5)


def test_extra_relu_head():
    torch.manual_seed(2)
    dec = Decoder(TEST_CFG, out_channels=2, extra_relu=True).eval()
    out = dec.head(torch.randn(2, 8))
    assert out.min() >= 0.0  # every block, the last too, ends in a ReLU
    with pytest.raises(SkullVAEError, match="out_channels=2"):
        Decoder(TEST_CFG, out_channels=1, extra_relu=True)
    with pytest.raises(SkullVAEError, match="1 or 2"):
        Decoder(TEST_CFG, out_channels=3)


def test_reparameterize_with_generator_is_reproducible_and_scaled():
    mu = torch.full((20000, 2), 3.0)
    logvar = torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)).item())
    a = reparameterize(mu, logvar, torch.Generator().manual_seed(7))
    b = reparameterize(mu, logvar, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 3.0) < 0.02
    assert abs(a.std().item() - 0.5) < 0.02


@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 16), (1, 2, 32, 32, 32), (1, 32, 32, 32), (32, 32, 32)])
def test_encoder_rejects_wrong_shape(shape):
    with pytest.raises(SkullVAEError, match="model grid 32x32x32"):
        Encoder(TEST_CFG)(torch.zeros(shape))


def test_decoder_rejects_wrong_latent():
    with pytest.raises(SkullVAEError, match=r"\(B, 8\)"):
        Decoder(TEST_CFG)(torch.zeros(2, 7))


def test_config_grid_not_divisible():
    with pytest.raises(SkullVAEError, match="cannot be divided"):
        NetworkConfig(grid=(30, 32, 32), channels=(8, 16, 32, 64))


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(3)
    vae = VAE(TEST_CFG)
    prob, mu, logvar, _ = vae(torch.rand(2, 1, *TEST_CFG.grid))
    (prob.mean() + mu.sum() + logvar.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vae.parameters())


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("conv_only", [False, True])
def test_conv_block_matches_monai_convolution(transposed, conv_only):
    """Our plain-torch block has MONAI's parameter names and computes the same function."""
    from monai.networks.blocks import Convolution

    from SkullVAELib.vae.networks import conv_block

    torch.manual_seed(0)
    ours = conv_block(3, 5, transposed=transposed, conv_only=conv_only)
    theirs = Convolution(
        spatial_dims=3,
        in_channels=3,
        out_channels=5,
        strides=2,
        kernel_size=3,
        act="PRELU",
        norm="BATCH",
        is_transposed=transposed,
        conv_only=conv_only,
    )
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 8, 8)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


def test_networks_do_not_import_monai():
    """MONAI's import (~3 s) stays out of the completion path."""
    import subprocess
    import sys

    code = "import sys, SkullVAELib.vae.networks, SkullVAELib.bundle.model_bundle; print('monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
