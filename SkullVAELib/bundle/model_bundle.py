"""The model bundle: one folder with everything needed to reconstruct and complete skulls.

```
MODEL/
  config.json                      format version, kind, network, decoder heads, info
  encoder.safetensors              q(z|x)
  decoder.safetensors              the stage-1 VAE decoder
  decoupled_decoder.safetensors    the stage-2 decoder (aggregated VAE only)
  completion.json                  class centroids of μ and DEV vectors (after fit-completion)
```

Weights are safetensors and metadata JSON: loading never unpickles. Every file is written
atomically (mode 0666 & ~umask, readable by others under the usual umask 022), config.json
last. Each save draws a ``save_id`` stored in config.json, in every weights file's metadata
and in completion.json, so a folder whose parts come from different saves (a crash half-way
through a save) is refused instead of completing skulls with a mixed model. Sizes declared by
config.json are checked against :mod:`SkullVAELib.core.limits` before anything is allocated.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from SkullVAELib import __version__
from SkullVAELib.bundle.checks import check_classifier, heads_of, network_of, read_json
from SkullVAELib.core.atomic import atomic_write_bytes, atomic_write_text
from SkullVAELib.core.config import COMPLETE, DEFAULT_RESAMPLE, NetworkConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_network
from SkullVAELib.vae.networks import Decoder, Encoder

FORMAT = "skullvae-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
COMPLETION_FILE = "completion.json"
WEIGHT_FILES = {
    "encoder": "encoder.safetensors",
    "decoder": "decoder.safetensors",
    "decoupled_decoder": "decoupled_decoder.safetensors",
}


@dataclass
class ModelBundle:
    """A trained (or imported, or fresh) model.

    Attributes:
        network: the architecture shared by all parts.
        encoder: q(z|x).
        decoder: the stage-1 decoder.
        decoupled_decoder: the stage-2 decoder (aggregated VAE) or None (regular VAE).
        centroids: class label ("complete", "cranial", "facial") -> centroid of μ, (d,) float64.
        info: JSON-able facts: β, epochs per stage, seeds, data manifest hash, timings, ...
        completion_info: JSON-able extras of fit-completion (class counts, case ids, ...).
    """

    network: NetworkConfig
    encoder: Encoder
    decoder: Decoder
    decoupled_decoder: Decoder | None = None
    centroids: dict[str, np.ndarray] | None = None
    info: dict = field(default_factory=dict)
    completion_info: dict = field(default_factory=dict)
    save_id: str | None = None  # set by save() and load(); ties the bundle's files together

    @property
    def kind(self) -> str:
        """ "aggregated" (a decoupled decoder exists) or "regular"."""
        return "aggregated" if self.decoupled_decoder is not None else "regular"

    @property
    def completion_decoder(self) -> Decoder:
        """The decoder completion uses: the decoupled one when present."""
        return self.decoupled_decoder if self.decoupled_decoder is not None else self.decoder

    def latent_code(self, mu, logvar):
        """The code the completion decoder reads, from ``mu``/``logvar`` ((d,) or (B, d), numpy or torch):
        μ, or μ + σ for a decoupled decoder trained on the authors' fixed z = μ + σ
        (``info["stage2_latent"] == "mu_plus_sigma"``). Centroids, DEV and completion all live in it."""
        if self.decoupled_decoder is None or self.info.get("stage2_latent") != "mu_plus_sigma":
            return mu
        if isinstance(mu, torch.Tensor):
            return mu + torch.exp(0.5 * logvar)
        return mu + np.exp(0.5 * np.asarray(logvar))

    @classmethod
    def from_vae(cls, vae: nn.Module, decoupled_decoder: Decoder | None = None, info: dict | None = None):
        """Wrap a trained ``networks.VAE`` (and optionally a stage-2 decoder)."""
        return cls(vae.cfg, vae.encoder, vae.decoder, decoupled_decoder, info=dict(info or {}))

    def to(self, device: str | torch.device) -> ModelBundle:
        for module in self._modules().values():
            module.to(device)
        return self

    def eval(self) -> ModelBundle:
        for module in self._modules().values():
            module.eval()
        return self

    # ---- completion data -------------------------------------------------------------
    def set_centroids(self, centroids: dict[str, np.ndarray], completion_info: dict | None = None) -> None:
        """Set class centroids of μ, each ``(d,)``; must include "complete"."""
        d = self.network.latent_size
        checked = {}
        for label, vector in centroids.items():
            arr = np.asarray(vector, dtype=np.float64).reshape(-1)
            if arr.shape != (d,) or not np.all(np.isfinite(arr)):
                raise SkullVAEError(f"centroid {label!r} must be {d} finite numbers, got shape {arr.shape}")
            checked[str(label)] = arr
        if COMPLETE not in checked:
            raise SkullVAEError("centroids need the 'complete' class to define deviation vectors")
        self.centroids = checked
        if completion_info is not None:
            self.completion_info = dict(completion_info)

    def dev(self, defect: str) -> np.ndarray:
        """DEV = c_complete − c_defect, ``(d,)`` (paper eq. 12)."""
        self.require_completion()
        if defect == COMPLETE or defect not in self.centroids:
            known = ", ".join(k for k in self.centroids if k != COMPLETE) or "none"
            raise SkullVAEError(f"model has no centroid for defect class {defect!r} (has: {known})")
        return self.centroids[COMPLETE] - self.centroids[defect]

    @property
    def defect_classes(self) -> list[str]:
        """Defect labels with a centroid (e.g. ["cranial", "facial"])."""
        return [k for k in (self.centroids or {}) if k != COMPLETE]

    def require_completion(self, path: str | Path | None = None) -> None:
        """SkullVAEError unless fit-completion stored centroids: the one check for missing completion data."""
        if not self.centroids:
            raise SkullVAEError("the model has no completion data (centroids); run skullvae fit-completion first", path)

    @property
    def resample(self) -> str:
        """The grid resampling mode the model was trained with (``info["resample"]``; "area" when unrecorded)."""
        return str(self.info.get("resample") or DEFAULT_RESAMPLE)

    # ---- saving ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the bundle to ``folder`` (created); removes stale parts of an older bundle."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SkullVAEError("cannot write a model bundle: path exists and is not a folder", folder)
        previous_id = self.save_id
        self.save_id = uuid.uuid4().hex
        try:
            config_text = _dumps(self._config_dict())  # fails (JSON) before anything is written
            blobs = {part: _weights_bytes(module, part, self.save_id) for part, module in self._modules().items()}
        except BaseException:
            self.save_id = previous_id
            raise
        # config.json goes first (removed) and last (written): a crash in between leaves a folder
        # without config.json ("not a bundle") or parts whose save_id differs (refused by load).
        _remove(folder / CONFIG_FILE)
        for part, blob in blobs.items():
            atomic_write_bytes(folder / WEIGHT_FILES[part], blob)
        if self.decoupled_decoder is None:
            _remove(folder / WEIGHT_FILES["decoupled_decoder"])
        if self.centroids:
            self.save_completion(folder)
        else:
            _remove(folder / COMPLETION_FILE)
        atomic_write_text(folder / CONFIG_FILE, config_text)
        return folder

    def save_completion(self, folder: str | Path) -> Path:
        """Write completion.json (centroids and DEV vectors) into an existing bundle folder."""
        self.require_completion(folder)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "latent_size": self.network.latent_size,
            "centroids": {k: v.tolist() for k, v in self.centroids.items()},
            "dev": {k: self.dev(k).tolist() for k in self.defect_classes},
            "info": self.completion_info,
            "save_id": self.save_id,
        }
        path = Path(folder) / COMPLETION_FILE
        atomic_write_text(path, _dumps(doc))
        return path

    def _modules(self) -> dict[str, nn.Module]:
        parts = {"encoder": self.encoder, "decoder": self.decoder}
        if self.decoupled_decoder is not None:
            parts["decoupled_decoder"] = self.decoupled_decoder
        return parts

    def _config_dict(self) -> dict:
        heads = {
            part: {"out_channels": m.out_channels, "extra_relu": m.extra_relu}
            for part, m in self._modules().items()
            if part != "encoder"
        }
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "library_version": __version__,
            "network": self.network.to_dict(),
            "heads": heads,
            "info": self.info,
            "save_id": self.save_id,
        }

    # ---- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
        """Read a bundle folder; models in eval mode on ``device``. One-line errors."""
        folder = Path(folder)
        if not folder.is_dir():
            raise SkullVAEError("not a SkullVAE model bundle (not a folder)", folder)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise SkullVAEError(f"not a SkullVAE model bundle (no {CONFIG_FILE})", folder)
        config = read_json(config_path)
        if config.get("format") != FORMAT:
            raise SkullVAEError("not a SkullVAE model config (no 'format': 'skullvae-model')", config_path)
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise SkullVAEError(
                f"unsupported model format version {version!r} (this is SkullVAE {__version__}, "
                f"which reads version {FORMAT_VERSION})",
                config_path,
            )
        network = network_of(config, config_path)
        heads = heads_of(config, config_path)
        kind = config.get("kind")
        check_network(network.grid, network.channels, network.latent_size, config_path)
        try:
            decoders = {p: Decoder(network, out, relu) for p, (out, relu) in heads.items()}
        except SkullVAEError as exc:
            raise SkullVAEError(f"invalid network in config: {exc.message}", config_path) from None
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SkullVAEError(f"invalid model config ({reason})", config_path) from None
        if kind not in ("regular", "aggregated") or "decoder" not in decoders or set(decoders) - set(WEIGHT_FILES):
            raise SkullVAEError(f"invalid model config (kind {kind!r}, decoders {sorted(decoders)})", config_path)
        if (kind == "aggregated") != ("decoupled_decoder" in decoders):
            raise SkullVAEError(f"config kind {kind!r} does not match its decoders {sorted(decoders)}", config_path)
        save_id = config.get("save_id")
        info = config.get("info") or {}
        if not isinstance(info, dict):
            raise SkullVAEError("invalid model config ('info' must be an object)", config_path)
        encoder = Encoder(network)
        _load_weights(encoder, folder / WEIGHT_FILES["encoder"], network, save_id)
        for part, decoder in decoders.items():
            _load_weights(decoder, folder / WEIGHT_FILES[part], network, save_id)
        bundle = cls(network, encoder, decoders["decoder"], decoders.get("decoupled_decoder"), info=info)
        bundle.save_id = save_id
        completion_path = folder / COMPLETION_FILE
        if completion_path.exists() or completion_path.is_symlink():
            doc = read_json(completion_path)
            try:
                completion_info = doc.get("info") or {}
                if not isinstance(completion_info, dict):
                    raise SkullVAEError("'info' must be an object")
                bundle.set_centroids(doc["centroids"], completion_info)
                check_classifier(completion_info, network.latent_size)
            except SkullVAEError as exc:
                raise SkullVAEError(f"invalid completion data: {exc.message}", completion_path) from None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise SkullVAEError(f"invalid completion data ({type(exc).__name__}: {exc})", completion_path) from None
            if doc.get("save_id") != save_id:
                raise SkullVAEError(_MIXED, completion_path)
        return bundle.to(device).eval()


def new_bundle(
    cfg: NetworkConfig,
    aggregated: bool = False,
    out_channels: int = 1,
    seed: int | None = None,
    info: dict | None = None,
) -> ModelBundle:
    """An untrained bundle (random weights, seeded if ``seed`` is given), for tests and benchmarks."""
    if seed is not None:
        torch.manual_seed(seed)
    decoupled = Decoder(cfg, out_channels) if aggregated else None
    return ModelBundle(cfg, Encoder(cfg), Decoder(cfg, out_channels), decoupled, info=dict(info or {})).eval()


_MIXED = (
    "belongs to another save of the model than config.json (a save was interrupted?); "
    "save or train the model again, or restore the folder from a backup"
)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise SkullVAEError(f"cannot remove an old part of the model bundle: {exc.strerror}", path) from None


def _weights_bytes(module: nn.Module, part: str, save_id: str) -> bytes:
    """The safetensors bytes of ``module`` (written by us, not safetensors, so the file keeps
    the atomic writer's mode and lock)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    return safetensors_bytes(tensors, metadata={"format": FORMAT, "part": part, "save_id": save_id})


def _load_weights(module: nn.Module, path: Path, network: NetworkConfig, save_id: str | None = None) -> None:
    """Fill ``module`` from a safetensors file, with one-line errors naming the file.

    ``save_id`` (from config.json) must match the file's metadata: parts of two saves are refused.
    """
    if not path.is_file():
        raise SkullVAEError("missing weights file of the model bundle", path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError or OSError/ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SkullVAEError(f"corrupt or truncated safetensors file ({reason})", path) from None
    load_checked(module, tensors, path, network)  # foreign or mis-shaped weights: the precise error first
    if metadata.get("save_id") != save_id:
        raise SkullVAEError(_MIXED, path)


def load_checked(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    path: Path,
    network: NetworkConfig,
    against: str = "config.json",
) -> None:
    """``module.load_state_dict(tensors)`` after checking keys, shapes and finiteness.

    Errors are one line naming ``path`` (also used by the reference importer).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SkullVAEError(
            f"not the weights of this model part (missing {_few(missing)}; unexpected {_few(unexpected)})", path
        )
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise SkullVAEError(
                f"weights do not match {against} (grid {'x'.join(map(str, network.grid))}, channels "
                f"{list(network.channels)}, latent {network.latent_size}): {key} has shape "
                f"{tuple(tensors[key].shape)}, expected {tuple(ref.shape)}",
                path,
            )
        if tensors[key].dtype != ref.dtype:
            raise SkullVAEError(f"weights {key} have dtype {tensors[key].dtype}, expected {ref.dtype}", path)
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise SkullVAEError(f"weights contain NaN or infinity ({key})", path)
    module.load_state_dict(tensors)


def _dumps(doc: dict) -> str:
    return json.dumps(_jsonable(doc), indent=2, allow_nan=False) + "\n"


def _jsonable(value):
    """Plain JSON values: arrays to lists, numpy scalars to Python, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise SkullVAEError(f"model info holds a value JSON cannot store: {type(value).__name__}")


def _few(keys: list[str], n: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
