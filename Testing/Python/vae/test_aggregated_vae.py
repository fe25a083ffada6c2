"""Issue 11: the latent path in float32 under autocast, ``recon_scale`` keeps β = 100 informative,
and the training step never reads a number back to the host (no synchronisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import phantom_data
from torch.utils._python_dispatch import TorchDispatchMode

from SkullVAELib.core.config import TrainConfig, network_preset
from SkullVAELib.evaluation.gaussianity import latent_gaussianity
from SkullVAELib.vae.networks import VAE, Decoder, encode_dataset
from SkullVAELib.vae.stages import _StageTrainer, train_stage1, train_stage2

NET = network_preset("test")  # 32³, d = 8


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return phantom_data(n=8)


def spy_linear(module: torch.nn.Linear, seen: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out.dtype, out.detach())))


def test_latent_code_and_first_decoder_layer_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    decoder = Decoder(NET).eval()
    seen: list = []
    spy_linear(decoder.linear, seen)
    # z = μ + σ of two skulls, 2e-4 apart: below bf16's step of 0.0039 at 1.0 (it would round both to 1.0).
    z = torch.stack([torch.full((8,), 0.9995), torch.full((8,), 0.9997)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        decoder(z)
    ((in_dtype, out_dtype, out),) = seen
    assert in_dtype == out_dtype == torch.float32
    assert not torch.equal(out[0], out[1])  # the two codes stay apart after the first layer
    encoder = VAE(NET).encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar = encoder(torch.rand(2, 1, *NET.grid))
    assert mu.dtype == logvar.dtype == torch.float32


def test_stage2_mu_plus_sigma_feeds_float32_codes_under_cpu_bf16(data, tmp_path):
    torch.manual_seed(0)
    vae = VAE(NET)
    train_stage1(vae, data, TrainConfig(beta=100.0, epochs=1, device="cpu"), tmp_path)
    mu, logvar = encode_dataset(vae.encoder, data)
    torch.manual_seed(1)
    decoder = Decoder(NET)
    seen: list = []
    spy_linear(decoder.linear, seen)
    cfg = TrainConfig(stage=2, epochs=1, device="cpu", precision="bf16", stage2_latent="mu_plus_sigma")
    train_stage2(vae.encoder, decoder, data, cfg, tmp_path)
    assert seen and all(i == o == torch.float32 for i, o, _ in seen)
    assert mu.dtype == logvar.dtype == torch.float32


@pytest.mark.parametrize("mode", ["mu_plus_sigma", "sample"])
def test_stage2_validation_decodes_the_code_completion_decodes(mode, data, tmp_path):
    """Validation scores the decoder on ``ModelBundle.latent_code``: μ + σ with mu_plus_sigma, else μ."""
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.vae.losses import soft_dice_loss

    torch.manual_seed(0)
    vae, val = VAE(NET).eval(), data[:3]
    torch.manual_seed(1)
    decoder = Decoder(NET)
    cfg = TrainConfig(stage=2, epochs=1, batch_size=4, device="cpu", precision="fp32", stage2_latent=mode)
    (row,) = train_stage2(vae.encoder, decoder, data, cfg, tmp_path, validation=val)
    mu, logvar = encode_dataset(vae.encoder, val)
    z = ModelBundle.from_vae(vae, decoder, info={"stage2_latent": mode}).latent_code(mu, logvar)
    with torch.no_grad():
        dice = (1.0 - soft_dice_loss(decoder.eval()(z), val.float())).mean().item()
    assert row["val_dice"] == pytest.approx(dice, rel=1e-5)


def active_units(scale: float, data: torch.Tensor, out) -> int:
    torch.manual_seed(0)
    vae = VAE(NET)
    cfg = TrainConfig(beta=100.0, recon_scale=scale, epochs=25, batch_size=2, lr=5e-3, device="cpu")
    train_stage1(vae, data, cfg, out)
    mu, logvar = encode_dataset(vae.encoder, data)
    return latent_gaussianity(mu.numpy(), logvar.numpy(), n_permutations=10)["active_units"]


def test_recon_scale_keeps_the_beta_100_posterior_informative(data, tmp_path):
    torch.set_num_threads(1)
    assert active_units(1.0, data, tmp_path / "paper") == 0  # the paper's scaling collapses
    assert active_units(1000.0, data, tmp_path / "informative") > 0


class SyncCounter(TorchDispatchMode):
    """Counts ops that read a device value back to the host (a CUDA synchronisation on a GPU).

    ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` all dispatch to ``aten._local_scalar_dense``;
    ``nonzero``/``masked_select``/``unique`` need the result size on the host. ``ignore``: tensors
    that live on the host even in a GPU run (Adam's step counters), by storage pointer.
    """

    SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "equal"}

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore, self.calls = ignore, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.SYNCING:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if first is None or first.data_ptr() not in self.ignore:
                self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fused", [False, True])
def test_training_step_reads_nothing_back_to_the_host(data, tmp_path, monkeypatch, fused):
    counts: list[list[str]] = []
    original = _StageTrainer.train_step

    def counted(self, idx):
        ignore = {s["step"].data_ptr() for s in self.optimizer.state.values() if "step" in s}
        if not ignore:  # the first step creates the optimiser state: run it uncounted
            return original(self, idx)
        with SyncCounter(ignore) as counter:
            original(self, idx)
        counts.append(counter.calls)

    monkeypatch.setattr(_StageTrainer, "train_step", counted)
    cfg = TrainConfig(beta=1.0, epochs=2, batch_size=2, device="cpu", fused_adam=fused)
    torch.manual_seed(0)
    vae = VAE(NET)
    train_stage1(vae, data, cfg, tmp_path / "s1")
    torch.manual_seed(1)
    train_stage2(vae.encoder, Decoder(NET), data, TrainConfig(**{**cfg.to_dict(), "stage": 2}), tmp_path)
    assert len(counts) == 2 * (2 * 4 - 1)  # both stages, 4 steps per epoch, all but each stage's first
    assert counts == [[]] * len(counts)


def test_sync_counter_sees_a_host_read():
    with SyncCounter(set()) as counter:
        t = torch.ones(3)
        float(t.sum())
        (t > 0).nonzero()
    assert counter.calls == ["_local_scalar_dense", "nonzero"]
    assert np.isfinite(float(t.sum()))
