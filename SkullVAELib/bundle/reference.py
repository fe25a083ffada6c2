"""Import the authors' published weights (Jianningli/skullVAE) into a ModelBundle.

Their three ``.pth`` files are PyTorch state dicts (read with ``weights_only=True``):

* a MONAI ``VarAutoEncoder(spatial_dims=3, in_shape=(1, 256, 256, 128), out_channels=2,
  channels=(32, 64, 64, 128, 128, 256), strides=(2,)*6, latent_size=32, norm=BATCH,
  num_res_units=0)`` (β = 1e-4 or β = 100). Keys ``encode.encode_i.{conv,adn.N,adn.A}``,
  ``mu``, ``logvar``, ``decodeL``, ``decode.decode_i.conv.{conv,adn.N,adn.A}``;
* the retrained decoder ``myDecoder``: ``decodeL`` and ``conv1..conv6`` MONAI transposed
  ``Convolution`` blocks (BatchNorm + PReLU, the last one too), each followed by a ReLU,
  two output channels, no sigmoid (they took the argmax).

Mapping: encoder blocks, heads and decoder blocks map one to one onto ours. The VAE's
2-channel decoder head is *folded* into one channel exactly: a transposed conv is linear,
so ``out₁ − out₀`` is the same layer with weights ``W[:, 1] − W[:, 0]`` and bias ``b₁ − b₀``,
and ``sigmoid(out₁ − out₀) = softmax(out)[1]``; the argmax the authors took is
``prob > 0.5``. (Their training applied a sigmoid before the softmax, a monotone step that
does not change that argmax.) The retrained decoder cannot be folded (ReLU after the last
layer), so it becomes ``Decoder(out_channels=2, extra_relu=True)``, recorded in config.json.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch

from SkullVAELib.bundle.model_bundle import ModelBundle, load_checked
from SkullVAELib.core.config import NetworkConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.vae.networks import Decoder, Encoder

PAPER_GRID = (256, 256, 128)
_ENCODE = re.compile(r"^encode\.encode_(\d+)\.(.+)$")
_DECODE = re.compile(r"^decode\.decode_(\d+)\.conv\.(.+)$")
_RETRAINED = re.compile(r"^conv(\d+)\.(.+)$")


def import_reference(
    vae_path: str | Path,
    decoder_path: str | Path | None = None,
    grid: tuple[int, int, int] | None = None,
    beta: float | None = None,
) -> ModelBundle:
    """Convert the authors' VAE (and optionally their retrained decoder) into a bundle.

    Args:
        vae_path: state dict of their MONAI VarAutoEncoder.
        decoder_path: state dict of their retrained decoder; makes an "aggregated" bundle.
        grid: model grid; default: 256×256×128 when the weights fit it, else the cube the
            bottleneck implies (the Linear layers fix only the product of the grid sides).
        beta: the β the VAE was trained with, recorded in the bundle's info if given.

    Returns:
        A ModelBundle in eval mode on the CPU, without centroids (run fit-completion).
    """
    vae_path = Path(vae_path)
    state = read_state_dict(vae_path)
    network = _infer_network(state, vae_path, grid)
    encoder_sd, decoder_sd = _map_vae(state, vae_path)
    encoder = Encoder(network)
    decoder = Decoder(network, out_channels=1)
    against = "the network inferred from the VAE weights"
    load_checked(encoder, encoder_sd, vae_path, network, against)
    load_checked(decoder, decoder_sd, vae_path, network, against)
    info: dict = {
        "source": "import-reference",
        "reference": {"vae": vae_path.name, "vae_sha256": _sha256(vae_path)},
        "beta": beta,
    }
    decoupled = None
    if decoder_path is not None:
        decoder_path = Path(decoder_path)
        decoupled = Decoder(network, out_channels=2, extra_relu=True)
        load_checked(
            decoupled, _map_retrained(read_state_dict(decoder_path), decoder_path), decoder_path, network, against
        )
        info["reference"].update(decoder=decoder_path.name, decoder_sha256=_sha256(decoder_path))
    return ModelBundle(network, encoder, decoder, decoupled, info=info).eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a state dict (``module.`` prefixes removed)."""
    if not path.is_file():
        raise SkullVAEError("file not found", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SkullVAEError(f"cannot read as a PyTorch state dict with weights_only=True ({reason})", path) from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):  # a training checkpoint
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SkullVAEError("not a PyTorch state dict (expected a mapping of names to tensors)", path)
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in obj.items()}


def _infer_network(state: dict[str, torch.Tensor], path: Path, grid: tuple[int, int, int] | None) -> NetworkConfig:
    if "mu.weight" not in state or "decodeL.weight" not in state:
        hint = "; is this the retrained decoder? pass it as the decoder" if "conv1.conv.weight" in state else ""
        raise SkullVAEError(f"not a MONAI VarAutoEncoder state dict (no mu.weight / decodeL.weight){hint}", path)
    convs = {int(m.group(1)): state[k] for k in state if (m := _ENCODE.match(k)) and m.group(2) == "conv.weight"}
    if not convs or sorted(convs) != list(range(len(convs))):
        raise SkullVAEError("VarAutoEncoder state dict without encode.encode_0..N conv weights", path)
    if any(w.ndim != 5 or 0 in w.shape for w in convs.values()):
        raise SkullVAEError("not a 3D VarAutoEncoder (encoder weights are not non-empty Conv3d weights)", path)
    mu = state["mu.weight"]
    if mu.ndim != 2 or 0 in mu.shape:  # a Linear layer's (latent size, bottleneck inputs)
        raise SkullVAEError(f"mu.weight has shape {tuple(mu.shape)}, not (latent size, inputs) of a Linear", path)
    channels = tuple(int(convs[i].shape[0]) for i in range(len(convs)))
    latent, flat = (int(s) for s in mu.shape)
    cells, rest = divmod(flat, channels[-1])
    if rest:
        raise SkullVAEError(f"mu.weight has {flat} inputs, not a multiple of {channels[-1]} channels", path)
    f = 2 ** len(channels)
    if grid is None:
        if math.prod(g // f for g in PAPER_GRID) == cells and all(g % f == 0 for g in PAPER_GRID):
            grid = PAPER_GRID
        else:
            side = round(cells ** (1 / 3))
            if side**3 != cells:
                raise SkullVAEError(
                    f"cannot infer the grid: the bottleneck has {cells} cells, not 256x256x128 nor a cube; "
                    "give the grid explicitly",
                    path,
                )
            grid = (side * f,) * 3
    grid = tuple(int(g) for g in grid)
    if math.prod(g // f for g in grid) != cells or any(g % f for g in grid):
        raise SkullVAEError(
            f"grid {'x'.join(map(str, grid))} does not fit the weights (bottleneck of {cells} cells "
            f"after {len(channels)} halvings)",
            path,
        )
    return NetworkConfig(grid=grid, channels=channels, latent_size=latent)


def _map_vae(state: dict[str, torch.Tensor], path: Path) -> tuple[dict, dict]:
    """Split a VarAutoEncoder state dict into our encoder and (folded, 1-channel) decoder."""
    enc: dict[str, torch.Tensor] = {}
    dec: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _ENCODE.match(key):
            enc[f"blocks.{m.group(1)}.{m.group(2)}"] = value
        elif m := _DECODE.match(key):
            dec[f"blocks.{m.group(1)}.{m.group(2)}"] = value
        elif key.startswith(("mu.", "logvar.")):
            enc[key] = value
        elif key.startswith("decodeL."):
            dec["linear." + key.removeprefix("decodeL.")] = value
        else:
            raise SkullVAEError(f"unexpected key {key!r} in a VarAutoEncoder state dict (residual units?)", path)
    last = max((int(k.split(".")[1]) for k in dec if k.startswith("blocks.")), default=-1)
    w, b = dec.get(f"blocks.{last}.conv.weight"), dec.get(f"blocks.{last}.conv.bias")
    if w is None or b is None or w.ndim != 5 or w.shape[1] != 2:
        raise SkullVAEError("the VAE's last decoder layer is not a 2-channel ConvTranspose3d", path)
    dec[f"blocks.{last}.conv.weight"] = w[:, 1:2] - w[:, 0:1]  # (in, 2, k, k, k) -> (in, 1, k, k, k)
    dec[f"blocks.{last}.conv.bias"] = b[1:2] - b[0:1]
    return _fill_batch_counts(enc), _fill_batch_counts(dec)


def _map_retrained(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The retrained decoder's keys (decodeL, conv1..convN) to our Decoder's."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _RETRAINED.match(key):
            out[f"blocks.{int(m.group(1)) - 1}.{m.group(2)}"] = value
        elif key.startswith("decodeL."):
            out["linear." + key.removeprefix("decodeL.")] = value
        else:
            hint = "; is this the VAE? pass it as the VAE" if key.startswith(("encode.", "mu.")) else ""
            raise SkullVAEError(f"not the authors' retrained decoder (unexpected key {key!r}){hint}", path)
    return _fill_batch_counts(out)


def _fill_batch_counts(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old PyTorch state dicts lack BatchNorm's ``num_batches_tracked`` (unused in eval)."""
    for key in [k for k in sd if k.endswith("adn.N.running_mean")]:
        sd.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0, dtype=torch.long))
    return sd


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
