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
atomically; config.json is written last, so a folder with a config.json is complete.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from SkullVAELib import __version__
from SkullVAELib.atomic import atomic_path, atomic_write_text
from SkullVAELib.config import NetworkConfig
from SkullVAELib.errors import SkullVAEError
from SkullVAELib.networks import Decoder, Encoder

FORMAT = "skullvae-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
COMPLETION_FILE = "completion.json"
WEIGHT_FILES = {
    "encoder": "encoder.safetensors",
    "decoder": "decoder.safetensors",
    "decoupled_decoder": "decoupled_decoder.safetensors",
}
COMPLETE = "complete"


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

    @property
    def kind(self) -> str:
        """ "aggregated" (a decoupled decoder exists) or "regular"."""
        return "aggregated" if self.decoupled_decoder is not None else "regular"

    @property
    def completion_decoder(self) -> Decoder:
        """The decoder completion uses: the decoupled one when present."""
        return self.decoupled_decoder if self.decoupled_decoder is not None else self.decoder

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
        if not self.centroids:
            raise SkullVAEError("model has no completion data; run skullvae fit-completion")
        if defect == COMPLETE or defect not in self.centroids:
            known = ", ".join(k for k in self.centroids if k != COMPLETE) or "none"
            raise SkullVAEError(f"model has no centroid for defect class {defect!r} (has: {known})")
        return self.centroids[COMPLETE] - self.centroids[defect]

    @property
    def defect_classes(self) -> list[str]:
        """Defect labels with a centroid (e.g. ["cranial", "facial"])."""
        return [k for k in (self.centroids or {}) if k != COMPLETE]

    # ---- saving ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the bundle to ``folder`` (created); removes stale parts of an older bundle."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SkullVAEError("cannot write a model bundle: path exists and is not a folder", folder)
        config_text = _dumps(self._config_dict())  # fails (JSON) before anything is written
        folder.mkdir(parents=True, exist_ok=True)
        for part, module in self._modules().items():
            _save_weights(module, folder / WEIGHT_FILES[part], part)
        if self.decoupled_decoder is None:
            (folder / WEIGHT_FILES["decoupled_decoder"]).unlink(missing_ok=True)
        if self.centroids:
            self.save_completion(folder)
        else:
            (folder / COMPLETION_FILE).unlink(missing_ok=True)
        atomic_write_text(folder / CONFIG_FILE, config_text)
        return folder

    def save_completion(self, folder: str | Path) -> Path:
        """Write completion.json (centroids and DEV vectors) into an existing bundle folder."""
        if not self.centroids:
            raise SkullVAEError("model has no completion data; run skullvae fit-completion")
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "latent_size": self.network.latent_size,
            "centroids": {k: v.tolist() for k, v in self.centroids.items()},
            "dev": {k: self.dev(k).tolist() for k in self.defect_classes},
            "info": self.completion_info,
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
        config = _read_json(config_path)
        if config.get("format") != FORMAT:
            raise SkullVAEError("not a SkullVAE model config (no 'format': 'skullvae-model')", config_path)
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise SkullVAEError(
                f"unsupported model format version {version!r} (this is SkullVAE {__version__}, "
                f"which reads version {FORMAT_VERSION})",
                config_path,
            )
        try:
            network = NetworkConfig.from_dict(config["network"])
            heads = config["heads"]
            kind = config["kind"]
            decoders = {p: Decoder(network, int(h["out_channels"]), bool(h["extra_relu"])) for p, h in heads.items()}
        except SkullVAEError as exc:
            raise SkullVAEError(f"invalid network in config: {exc.message}", config_path) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise SkullVAEError(f"invalid model config ({type(exc).__name__}: {exc})", config_path) from None
        if kind not in ("regular", "aggregated") or "decoder" not in decoders or set(decoders) - set(WEIGHT_FILES):
            raise SkullVAEError(f"invalid model config (kind {kind!r}, decoders {sorted(decoders)})", config_path)
        if (kind == "aggregated") != ("decoupled_decoder" in decoders):
            raise SkullVAEError(f"config kind {kind!r} does not match its decoders {sorted(decoders)}", config_path)
        encoder = Encoder(network)
        _load_weights(encoder, folder / WEIGHT_FILES["encoder"], network)
        for part, decoder in decoders.items():
            _load_weights(decoder, folder / WEIGHT_FILES[part], network)
        bundle = cls(
            network, encoder, decoders["decoder"], decoders.get("decoupled_decoder"), info=config.get("info") or {}
        )
        completion_path = folder / COMPLETION_FILE
        if completion_path.exists():
            doc = _read_json(completion_path)
            try:
                bundle.set_centroids(doc["centroids"], doc.get("info") or {})
            except SkullVAEError as exc:
                raise SkullVAEError(f"invalid completion data: {exc.message}", completion_path) from None
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SkullVAEError(f"invalid completion data ({type(exc).__name__}: {exc})", completion_path) from None
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


def _save_weights(module: nn.Module, path: Path, part: str) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "part": part})


def _load_weights(module: nn.Module, path: Path, network: NetworkConfig) -> None:
    """Fill ``module`` from a safetensors file, with one-line errors naming the file."""
    if not path.is_file():
        raise SkullVAEError("missing weights file of the model bundle", path)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError or OSError/ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SkullVAEError(f"corrupt or truncated safetensors file ({reason})", path) from None
    load_checked(module, tensors, path, network)


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
        if tensors[key].is_floating_point() and not torch.isfinite(tensors[key]).all():
            raise SkullVAEError(f"weights contain NaN or infinity ({key})", path)
    module.load_state_dict(tensors)


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkullVAEError(f"cannot read JSON ({exc})", path) from None
    if not isinstance(doc, dict):
        raise SkullVAEError("expected a JSON object", path)
    return doc


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
