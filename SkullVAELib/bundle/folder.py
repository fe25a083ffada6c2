"""A model folder and every part it may hold, read by one loader.

```
MODEL/
  config.json, encoder/decoder*.safetensors, completion.json   the β-VAE (ModelBundle)
  refiner.safetensors                                           the learned facial implant source
  refiner.NAME.safetensors                                      more refiners: all of them form an ensemble
  residual.safetensors, residual.NAME.safetensors               the learned cranial residual (one, or an ensemble)
  atlas/atlas.json (+ skulls)                                   the atlas implant source
  shapes.safetensors                                            complete skulls' ray maps: the rim fit's shape cue
  model_card.json                                               what it is, how it was trained
```

Every part is optional; a part is loaded on first use and kept, so a batch pays once. Heavy
imports (torch for the VAE, MONAI for the refiner, SimpleITK for the atlas) happen only when
that part is loaded. Several refiner (or residual) files are one predictor, an ensemble: their
probabilities (shifts) are averaged before the threshold (:mod:`SkullVAELib.implant.ensemble`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError

REFINER_FILE = "refiner.safetensors"
RESIDUAL_FILE = "residual.safetensors"
SHAPES_FILE = "shapes.safetensors"  # the shape bank (implant.shapebank): the rim fit's cue across the mid-plane
ATLAS_FOLDER = "atlas"
ATLAS_MANIFEST = "atlas.json"
VAE_CONFIG = "config.json"

PathLike = str | os.PathLike


class ModelFolder:
    """The parts of one model folder (or none: ``ModelFolder(None)`` has no parts).

    Args:
        path: the folder, or None.
        refiner: refiner file(s) that replace the folder's (each must exist; several: an ensemble), or None.
        atlas: an atlas-set folder that replaces ``MODEL/atlas`` (must hold atlas.json), or None.
        residual: residual file(s) that replace the folder's (as ``refiner``), or None.
    """

    def __init__(
        self,
        path: PathLike | None,
        refiner: PathLike | Sequence[PathLike] | None = None,
        atlas: PathLike | None = None,
        residual: PathLike | Sequence[PathLike] | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None and not self.path.is_dir():
            raise SkullVAEError("no such model folder", self.path)
        if atlas is not None and not (Path(atlas) / ATLAS_MANIFEST).is_file():
            raise SkullVAEError(f"not an atlas set (no {ATLAS_MANIFEST}; build one with `skullvae build-atlas`)", atlas)
        self.refiner_paths = _given(refiner, "refiner") or self._members(REFINER_FILE)
        self.atlas_path = Path(atlas) if atlas is not None else self._part(ATLAS_FOLDER, marker=ATLAS_MANIFEST)
        self.residual_paths = _given(residual, "residual") or self._members(RESIDUAL_FILE)
        self.vae_path = self.path if self._part(VAE_CONFIG, file=True) is not None else None
        self.shapes_path = self._part(SHAPES_FILE, file=True)
        self._loaded: dict[str, object] = {}
        if self.vae_path is not None:  # a broken config.json is refused now, not when a source needs it
            from SkullVAELib.bundle.checks import network_of, read_json

            network_of(read_json(self.vae_path / VAE_CONFIG), self.vae_path / VAE_CONFIG)
        if self.path is not None and not self.parts():
            raise SkullVAEError(
                f"not a SkullVAE model folder (none of {VAE_CONFIG}, {REFINER_FILE}, {RESIDUAL_FILE}, "
                f"{SHAPES_FILE}, {ATLAS_FOLDER}/{ATLAS_MANIFEST})",
                self.path,
            )

    def _part(self, name: str, file: bool = False, marker: str | None = None) -> Path | None:
        if self.path is None:
            return None
        candidate = self.path / name
        if file:
            return candidate if candidate.is_file() else None
        return candidate if (candidate / (marker or "")).is_file() else None

    def _members(self, name: str) -> tuple[Path, ...]:
        """The folder's files of one learned part: ``name`` (``refiner.safetensors``) first, then
        every ``refiner.NAME.safetensors`` beside it by name; several are one ensemble."""
        if self.path is None:
            return ()
        stem, ext = name.split(".", 1)
        files = [self.path / name, *sorted(self.path.glob(f"{stem}.*.{ext}"))]
        return tuple(f for f in files if f.is_file())

    @property
    def refiner_path(self) -> Path | None:
        """The (first) refiner file, or None."""
        return self.refiner_paths[0] if self.refiner_paths else None

    @property
    def residual_path(self) -> Path | None:
        """The (first) residual file, or None."""
        return self.residual_paths[0] if self.residual_paths else None

    @classmethod
    def from_parts(cls, vae=None, refiner=None, atlas=None, residual=None, shapes=None) -> ModelFolder:
        """A folder whose parts are already in memory (a batch or an evaluation that loaded them,
        or a test's stand-ins): ``vae`` a ModelBundle, ``refiner`` a callable skull -> LearnedImplant,
        ``atlas`` an AtlasSet, ``residual`` a CranialResidual, ``shapes`` a ShapeBank."""
        folder = cls(None)
        parts = (("vae", vae), ("refiner", refiner), ("atlas", atlas), ("residual", residual), ("shapes", shapes))
        for name, part in parts:
            if part is not None:
                folder._loaded[name] = part
                where = Path(f"<{name} in memory>")
                if name in ("refiner", "residual"):
                    setattr(folder, f"{name}_paths", (where,))
                else:
                    setattr(folder, f"{name}_path", where)
        return folder

    @property
    def has_vae(self) -> bool:
        return self.vae_path is not None

    @property
    def has_refiner(self) -> bool:
        return self.refiner_path is not None

    @property
    def has_atlas(self) -> bool:
        return self.atlas_path is not None

    @property
    def has_residual(self) -> bool:
        return self.residual_path is not None

    @property
    def has_shapes(self) -> bool:
        return self.shapes_path is not None

    def vae(self):
        """The :class:`~SkullVAELib.bundle.model_bundle.ModelBundle` (on the CPU; loaded once)."""
        if "vae" not in self._loaded:
            if self.vae_path is None:
                where = self.path if self.path is not None else "no --model given"
                raise SkullVAEError(f"no trained β-VAE here ({VAE_CONFIG} missing)", where)
            from SkullVAELib.bundle.model_bundle import ModelBundle

            self._loaded["vae"] = ModelBundle.load(self.vae_path, device="cpu")
        return self._loaded["vae"]

    def refiner(self, device: str = "cpu"):
        """The :class:`~SkullVAELib.implant.learned.infer.FacialRefiner` (loaded once; an ensemble
        of the members when there are several)."""
        if "refiner" in self._loaded:  # given in memory (from_parts)
            return self._loaded["refiner"]
        from SkullVAELib.core.devices import resolve_device

        device = str(resolve_device(device))  # "auto" and "cpu" on a CPU machine share one load
        key = f"refiner:{device}"
        if key not in self._loaded:
            if self.refiner_path is None:
                raise SkullVAEError(f"no learned refiner ({REFINER_FILE})", self.path)
            from SkullVAELib.implant.learned.infer import FacialRefiner

            self._loaded[key] = FacialRefiner.load(self.refiner_paths, device)
        return self._loaded[key]

    def residual(self, device: str = "cpu"):
        """The :class:`~SkullVAELib.implant.residual.infer.CranialResidual` (loaded once per device; an
        ensemble of the members when there are several)."""
        if "residual" in self._loaded:  # given in memory (from_parts)
            return self._loaded["residual"]
        from SkullVAELib.core.devices import resolve_device

        device = str(resolve_device(device))
        key = f"residual:{device}"
        if key not in self._loaded:
            if self.residual_path is None:
                raise SkullVAEError(f"no cranial residual ({RESIDUAL_FILE})", self.path)
            from SkullVAELib.implant.residual.infer import CranialResidual

            self._loaded[key] = CranialResidual.load(self.residual_paths, device)
        return self._loaded[key]

    def atlas(self):
        """The :class:`~SkullVAELib.implant.atlas.store.AtlasSet` (loaded once)."""
        if "atlas" not in self._loaded:
            if self.atlas_path is None:
                raise SkullVAEError(f"no atlas set ({ATLAS_FOLDER}/{ATLAS_MANIFEST})", self.path)
            from SkullVAELib.implant.atlas.store import AtlasSet

            self._loaded["atlas"] = AtlasSet.load(self.atlas_path)
        return self._loaded["atlas"]

    def shapes(self):
        """The :class:`~SkullVAELib.implant.shapebank.ShapeBank` (loaded once)."""
        if "shapes" not in self._loaded:
            if self.shapes_path is None:
                raise SkullVAEError(f"no shape bank ({SHAPES_FILE})", self.path)
            from SkullVAELib.implant.shapebank import load_shape_bank

            self._loaded["shapes"] = load_shape_bank(self.shapes_path)
        return self._loaded["shapes"]

    def parts(self) -> list[str]:
        """The parts present: "vae", "refiner", "residual", "shapes", "atlas" (in that order)."""
        named = (("vae", self.vae_path), ("refiner", self.refiner_path), ("residual", self.residual_path))
        return [n for n, p in (*named, ("shapes", self.shapes_path), ("atlas", self.atlas_path)) if p]


def _given(paths: PathLike | Sequence[PathLike] | None, what: str) -> tuple[Path, ...]:
    """``paths`` given on the command line as a tuple (empty for None); a missing file is one line."""
    if paths is None:
        return ()
    given = (Path(paths),) if isinstance(paths, str | os.PathLike) else tuple(Path(p) for p in paths)
    for path in given:
        if not path.is_file():
            raise SkullVAEError(f"no such {what} file", path)
    return given
