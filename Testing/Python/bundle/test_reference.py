"""Importer of the authors' weights, tested without their files.

We build what their code builds (MONAI VarAutoEncoder with the paper's arguments at a small
grid, and a retrained decoder written as theirs: ``decodeL`` + ``conv1..conv6`` MONAI
transposed Convolution blocks, each followed by a ReLU, 2 channels, no sigmoid), randomise
every weight and BatchNorm statistic, save the state dicts with torch.save, import, and
compare outputs in eval mode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Norm
from monai.networks.nets import VarAutoEncoder
from torch import nn

from SkullVAELib.bundle.model_bundle import ModelBundle
from SkullVAELib.bundle.reference import import_reference
from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError

CHANNELS = (32, 64, 64, 128, 128, 256)  # the paper's
GRID = (64, 64, 64)  # small: bottleneck 1×1×1 after six halvings
LATENT = 32


class RetrainedDecoder(nn.Module):
    """The authors' ``myDecoder`` (VAEDecoderRetrain.py), with the grid as a parameter."""

    def __init__(self, grid=GRID, channels=CHANNELS, latent=LATENT):
        super().__init__()
        self.bottleneck = (channels[-1], *(g // 2 ** len(channels) for g in grid))
        self.decodeL = nn.Linear(latent, int(torch.tensor(self.bottleneck).prod()))
        ins, outs = channels[::-1], (*channels[-2::-1], 2)
        for k, (i, o) in enumerate(zip(ins, outs, strict=True), start=1):
            block = Convolution(
                spatial_dims=3, in_channels=i, out_channels=o, strides=2, norm=Norm.BATCH, is_transposed=True
            )
            self.add_module(f"conv{k}", block)
        self.n = len(ins)

    def forward(self, z):
        x = F.relu(self.decodeL(z)).view(z.shape[0], *self.bottleneck)
        for k in range(1, self.n + 1):
            x = F.relu(getattr(self, f"conv{k}")(x))
        return x


class Pickled:
    """An arbitrary pickled object, which weights_only loading must refuse."""


def reference_vae(grid=GRID):
    return VarAutoEncoder(
        spatial_dims=3,
        in_shape=(1, *grid),
        out_channels=2,
        channels=CHANNELS,
        strides=(2,) * 6,
        latent_size=LATENT,
        norm=Norm.BATCH,
        num_res_units=0,
    )


def randomise(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(123)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 + 0.1 * torch.randn(m.weight.shape, generator=gen))
    return module.eval()


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    vae, dec = randomise(reference_vae(), 1), randomise(RetrainedDecoder(), 2)
    torch.save(vae.state_dict(), folder / "final_epoch_model.pth")
    torch.save(dec.state_dict(), folder / "retrained_decoder.pth")
    return vae, dec, folder / "final_epoch_model.pth", folder / "retrained_decoder.pth"


def test_import_matches_reference_outputs(reference_files):
    vae, dec, vae_path, dec_path = reference_files
    bundle = import_reference(vae_path, dec_path)
    assert bundle.kind == "aggregated"
    assert bundle.network.grid == GRID and bundle.network.channels == CHANNELS
    assert bundle.decoder.out_channels == 1  # folded
    assert bundle.decoupled_decoder.out_channels == 2 and bundle.decoupled_decoder.extra_relu
    x = (torch.rand(2, 1, *GRID, generator=torch.Generator().manual_seed(3)) > 0.7).float()
    with torch.no_grad():
        ref_mu, ref_logvar = vae.encode_forward(x)
        mu, logvar = bundle.encoder(x)
        torch.testing.assert_close(mu, ref_mu, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logvar, ref_logvar, atol=1e-5, rtol=1e-4)
        ref_logits = vae.decode_forward(ref_mu, use_sigmoid=False)
        prob = bundle.decoder(mu)
        torch.testing.assert_close(prob, torch.softmax(ref_logits, 1)[:, 1:2], atol=1e-5, rtol=1e-4)
        # The authors took the argmax of their sigmoid outputs: the same voxels as prob > 0.5.
        ref_argmax = vae.decode_forward(ref_mu, use_sigmoid=True).argmax(1, keepdim=True).bool()
        decided = (ref_logits[:, 1:2] - ref_logits[:, 0:1]).abs() > 1e-4
        assert torch.equal((prob > 0.5)[decided], ref_argmax[decided])
        assert (prob > 0.5).any() and (prob < 0.5).any()  # the comparison is not on a constant output
        ref_dec = dec(ref_mu)
        torch.testing.assert_close(
            bundle.decoupled_decoder(mu), torch.softmax(ref_dec, 1)[:, 1:2], atol=1e-5, rtol=1e-4
        )


def test_cli_writes_a_loadable_bundle(reference_files, tmp_path, capsys):
    vae, _, vae_path, dec_path = reference_files
    out = tmp_path / "model"
    assert (
        main(
            ["import-reference", "--vae", str(vae_path), "--decoder", str(dec_path), "--out", str(out), "--beta", "100"]
        )
        == 0
    )
    assert "aggregated" in capsys.readouterr().out
    loaded = ModelBundle.load(out)
    assert loaded.kind == "aggregated" and loaded.centroids is None
    assert loaded.info["beta"] == 100.0 and len(loaded.info["reference"]["vae_sha256"]) == 64
    x = torch.rand(1, 1, *GRID, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x)[0], vae.encode_forward(x)[0], atol=1e-5, rtol=1e-4)
    # An existing bundle is not replaced without --overwrite: one line naming the folder, exit 2.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["import-reference", "--vae", str(vae_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["import-reference", "--vae", str(vae_path), "--out", str(out), "--overwrite"]) == 0
    assert ModelBundle.load(out).kind == "regular"


def test_cli_force_is_no_option(reference_files, tmp_path, capsys):
    _, _, vae_path, _ = reference_files
    with pytest.raises(SystemExit) as usage_error:  # the old name of --overwrite is gone
        main(["import-reference", "--vae", str(vae_path), "--out", str(tmp_path / "model"), "--force"])
    assert usage_error.value.code == 2 and "--force" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_cli_out_that_is_a_file_is_refused_before_reading(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["import-reference", "--vae", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0] and (tmp_path / "file").read_text() == "x"


def test_regular_import_and_explicit_grid(reference_files):
    _, _, vae_path, _ = reference_files
    bundle = import_reference(vae_path, grid=(64, 64, 64))
    assert bundle.kind == "regular" and bundle.decoupled_decoder is None
    with pytest.raises(SkullVAEError, match="grid 128x64x64 does not fit the weights"):
        import_reference(vae_path, grid=(128, 64, 64))


def test_paper_grid_is_inferred(tmp_path):
    # The real layout at 256×256×128: bottleneck 256×4×4×2 = 8192 inputs to mu. Only shapes matter.
    sd = reference_vae(grid=(256, 256, 128)).state_dict()
    torch.save(sd, tmp_path / "vae.pth")
    assert import_reference(tmp_path / "vae.pth").network.grid == (256, 256, 128)


def _err(args, capsys) -> str:
    assert main(["import-reference", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_bad_inputs(reference_files, tmp_path, capsys):
    _, _, vae_path, dec_path = reference_files
    out = ["--out", str(tmp_path / "m")]
    assert "file not found" in _err(["--vae", str(tmp_path / "none.pth"), *out], capsys)
    (tmp_path / "garbage.pth").write_bytes(b"not a zip or pickle at all")
    assert "cannot read as a PyTorch state dict" in _err(["--vae", str(tmp_path / "garbage.pth"), *out], capsys)
    torch.save(Pickled(), tmp_path / "pickled.pth")  # a custom class: weights_only refuses it
    assert "weights_only=True" in _err(["--vae", str(tmp_path / "pickled.pth"), *out], capsys)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    assert "not a PyTorch state dict" in _err(["--vae", str(tmp_path / "list.pth"), *out], capsys)
    msg = _err(["--vae", str(dec_path), *out], capsys)
    assert "not a MONAI VarAutoEncoder state dict" in msg and "retrained decoder" in msg
    msg = _err(["--vae", str(vae_path), "--decoder", str(vae_path), *out], capsys)
    assert "not the authors' retrained decoder" in msg
    torch.save({"linear.weight": torch.zeros(3, 3)}, tmp_path / "foreign.pth")
    assert "not a MONAI VarAutoEncoder" in _err(["--vae", str(tmp_path / "foreign.pth"), *out], capsys)
    torch.save(RetrainedDecoder(channels=(16, 32, 64, 64, 128, 256)).state_dict(), tmp_path / "other.pth")
    msg = _err(["--vae", str(vae_path), "--decoder", str(tmp_path / "other.pth"), *out], capsys)
    assert "other.pth" in msg and "weights do not match the network inferred from the VAE weights" in msg
    assert not (tmp_path / "m").exists()  # nothing written on any error


def test_checkpoint_dict_and_module_prefix(reference_files, tmp_path):
    vae, _, _, _ = reference_files
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in vae.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    bundle = import_reference(tmp_path / "ckpt.pth")
    torch.testing.assert_close(bundle.encoder.mu.weight, vae.mu.weight)


@pytest.mark.parametrize(
    ("broken", "expected"),
    [("mu.weight", "mu.weight has shape (32,)"), ("encode.encode_5.conv.weight", "not a 3D VarAutoEncoder")],
)
def test_malformed_weights_are_one_line_naming_the_file(reference_files, tmp_path, capsys, broken, expected):
    # A state dict with the right keys but a 1-D mu.weight (or a last encoder conv of zero channels) gave a
    # ValueError (ZeroDivisionError) traceback instead of a one-line error naming the file.
    vae, _, _, _ = reference_files
    sd = dict(vae.state_dict())
    sd[broken] = torch.zeros(32) if broken == "mu.weight" else torch.zeros(0, 128, 3, 3, 3)
    torch.save(sd, tmp_path / "broken.pth")
    msg = _err(["--vae", str(tmp_path / "broken.pth"), "--out", str(tmp_path / "m")], capsys)
    assert expected in msg and "broken.pth" in msg, msg
    assert not (tmp_path / "m").exists()
