"""Everything a :class:`~SkullVAELib.pipeline.completer.Completer` needs to know, in one place.

The CLI (``skullvae complete``), ``skullvae evaluate --implants`` and the Slicer module (through
the CLI child) all build a :class:`CompletionSettings` and hand it to one Completer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.config import DEFECT_CHOICES, IMPLANT_SOURCES, CompletionConfig, check_inference_precision
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.finish import FinishSettings
from SkullVAELib.implant.postprocess import PostprocessConfig
from SkullVAELib.implant.rimfit import RimFitConfig

__all__ = [
    "AtlasSettings",
    "CompletionSettings",
    "FinishSettings",
    "LearnedSettings",
    "ResidualSettings",
    "RimFitSettings",
    "check_sources",
]


@dataclass(frozen=True)
class RimFitSettings:
    """The rim-fit source: ``mirror`` lets it use the skull's mirror image where that covers the hole;
    ``shapes``, where it does not, the model folder's shape bank or else the installed shape model;
    ``self_check`` tries the same fill on the hole's outline moved over the skull's intact vault and
    reports how well it did there (:mod:`SkullVAELib.implant.selfcheck`; ≈ 2-3 s a skull)."""

    mirror: bool = True
    shapes: bool = True
    self_check: bool = False
    config: RimFitConfig = field(default_factory=RimFitConfig)


def _paths(value) -> tuple[Path, ...]:
    """None, one path or several as a tuple of paths."""
    if value is None:
        return ()
    if isinstance(value, str | Path):
        return (Path(value),)
    return tuple(Path(v) for v in value)


@dataclass(frozen=True)
class LearnedSettings:
    """The learned facial source: ``paths`` of refiner files (several: one ensemble, their
    probabilities averaged); empty = the model folder's ``refiner*.safetensors``."""

    paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", _paths(self.paths))


@dataclass(frozen=True)
class ResidualSettings:
    """The learned cranial residual: ``paths`` of residual files (several: one ensemble, their
    shifts averaged); empty = the model folder's ``residual*.safetensors``."""

    paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", _paths(self.paths))


@dataclass(frozen=True)
class AtlasSettings:
    """The atlas source: ``path`` of an atlas-set folder (None = ``MODEL/atlas``); ``config`` an AtlasConfig."""

    path: Path | None = None
    config: object | None = None


@dataclass(frozen=True)
class CompletionSettings:
    """One completion recipe.

    Attributes:
        model: a model folder (or None: no trained model; the rim fit still serves cranial defects).
        sources: implant sources tried in this order (``core.config.IMPLANT_SOURCES`` words).
        defect: "auto" (the skull's geometry first: an enclosed hole in the vault is cranial; otherwise
            the model's classifier when a model with centroids is loaded, else facial), "cranial" or "facial".
        vae: the model's part (γ, threshold, cleanup, uncertainty samples, resampling, test-time fit);
            its ``defect`` is ignored (``defect`` above decides).
        rimfit, learned, atlas, residual: each source's own settings.
        postprocess: the shared post-processing applied to every proposal.
        finish: smoothing, a gap to the bone and a minimum thickness for manufacture (all off by default).
        quality: score every proposal's agreement with the rim and pass over failed ones.
        device: "auto", "cpu", "cuda" or "cuda:N" (the VAE and the learned source).
        precision: "float32" or "bfloat16" for the VAE.
    """

    model: Path | None = None
    sources: tuple[str, ...] = IMPLANT_SOURCES
    defect: str = "auto"
    vae: CompletionConfig = field(default_factory=CompletionConfig)
    rimfit: RimFitSettings = field(default_factory=RimFitSettings)
    learned: LearnedSettings = field(default_factory=LearnedSettings)
    residual: ResidualSettings = field(default_factory=ResidualSettings)
    atlas: AtlasSettings = field(default_factory=AtlasSettings)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    finish: FinishSettings = field(default_factory=FinishSettings)
    quality: bool = True
    device: str = "auto"
    precision: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", check_sources(self.sources))
        if self.defect not in DEFECT_CHOICES:
            raise SkullVAEError(f"defect must be one of {', '.join(DEFECT_CHOICES)}, got {self.defect!r}")
        check_inference_precision(self.precision)
        for name in ("model",):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not math.isfinite(self.vae.gamma):
            raise SkullVAEError(f"γ must be finite, got {self.vae.gamma}")

    def model_folder(self):
        """The :class:`~SkullVAELib.bundle.folder.ModelFolder` these settings name (its parts load on use)."""
        from SkullVAELib.bundle.folder import ModelFolder

        return ModelFolder(self.model, self.learned.paths or None, self.atlas.path, self.residual.paths or None)

    def with_gamma(self, gamma: float) -> CompletionSettings:
        """The same settings with another γ (a γ sweep reuses one Completer; see ``Completer.complete``)."""
        return dataclasses.replace(self, vae=dataclasses.replace(self.vae, gamma=gamma))

    def summary(self) -> dict:
        """JSON-able description (for the result file and logs)."""
        return {
            "model": None if self.model is None else str(self.model),
            "sources": list(self.sources),
            "defect": self.defect,
            "gamma": self.vae.gamma,
            "mirror": self.rimfit.mirror,
            "self_check": self.rimfit.self_check,
            "device": self.device,
        }


def check_sources(names) -> tuple[str, ...]:
    """The implant-source names as a tuple: registered, none twice, at least one (one-line errors)."""
    from SkullVAELib.implant.sources import source_class

    sources = tuple(names)
    if not sources:
        raise SkullVAEError("no implant source given; choose from " + ", ".join(IMPLANT_SOURCES))
    for name in sources:
        source_class(name)  # one-line error listing the known sources
    if len(set(sources)) != len(sources):
        raise SkullVAEError(f"an implant source is named twice: {','.join(sources)}")
    return sources
