"""The model registry: ``SkullVAELib/models/models.json``, the pretrained models users can download.

Each entry names one released model bundle (an archive of the bundle folder) with its
URL on the project's release page, its sha256 and size, and the facts a user needs to
choose it (grid, stages, training data and split, licence, held-out metrics). An entry
whose ``released`` is false has no release asset yet: it cannot be downloaded, and
``skullvae models list`` says so. Pure stdlib: safe to import inside Slicer's GUI process.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError

REGISTRY_FORMAT = "skullvae-model-registry"
REGISTRY_ENV = "SKULLVAE_REGISTRY"  # another registry file (tests, private mirrors)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


REGISTRY_FILE = "models.json"  # package data of SkullVAELib.models (pyproject.toml, CMakeLists.txt ship it)


def default_registry_path() -> Path:
    """``models.json`` beside this module: the same file in the repository, a wheel install and Slicer."""
    return Path(__file__).resolve().with_name(REGISTRY_FILE)


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable model.

    Attributes:
        name: the name users type (``skullvae models download NAME``, ``complete --model NAME``).
        version: the entry's version; a new release of the same name gets a new version.
        url: the bundle archive (.zip or .tar[.gz]) on the project's release page.
        sha256: hex digest of the archive (None until released).
        size: archive size in bytes (None until released); a download stops there.
        unpacked_size: bytes the archive unpacks to (optional); installing refuses more
            (``archive.unpacked_limit``; without it, 20x the archive).
        released: False while no release asset exists at ``url``.
        kind: "regular" or "aggregated"; grid: model grid (X, Y, Z) in voxels.
        stages: per stage, e.g. {"1": {"beta": 100, "epochs": 120}, "2": {"epochs": 300}}.
        training_data, split, licence, description: text for people.
        metrics: held-out metrics (test split) or None until measured.
    """

    name: str
    version: str
    url: str
    sha256: str | None = None
    size: int | None = None
    unpacked_size: int | None = None
    released: bool = False
    kind: str = ""
    grid: tuple[int, int, int] | None = None
    stages: dict = field(default_factory=dict)
    training_data: str = ""
    split: dict = field(default_factory=dict)
    licence: str = ""
    metrics: dict | None = None
    description: str = ""
    recipe: str = ""

    @property
    def archive_name(self) -> str:
        """File name of the archive (the last part of the URL)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1] or f"{self.name}-{self.version}.zip"

    @property
    def downloadable(self) -> bool:
        return self.released and bool(self.sha256)

    def status(self) -> str:
        """One phrase for listings: why it can or cannot be downloaded."""
        if not self.released:
            return "not released yet (no release asset exists)"
        if not self.sha256:
            return "registry entry has no sha256 (cannot be verified)"
        return "available for download"


@dataclass(frozen=True)
class Registry:
    """The registry file: entries by name, plus the release facts."""

    path: Path
    entries: tuple[RegistryEntry, ...]
    release_page: str = ""
    note: str = ""

    def get(self, name: str) -> RegistryEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def by_sha256(self, digest: str) -> RegistryEntry | None:
        return next((e for e in self.entries if e.sha256 and e.sha256.lower() == digest.lower()), None)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def any_released(self) -> bool:
        return any(e.released for e in self.entries)


def check_name(name: str) -> str:
    """A model name usable as a folder name; SkullVAEError otherwise."""
    if not NAME_PATTERN.match(name or "") or name in (".", ".."):
        raise SkullVAEError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)"
        )
    return name


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read a registry file (default: ``$SKULLVAE_REGISTRY`` or :func:`default_registry_path`).

    A missing default registry (a damaged install) reads as an empty registry, so the Slicer
    module still opens; an explicit path or ``$SKULLVAE_REGISTRY`` must exist.
    """
    explicit = path is not None or bool(os.environ.get(REGISTRY_ENV))
    path = Path(path if path is not None else os.environ.get(REGISTRY_ENV) or default_registry_path())
    if not path.is_file():
        if explicit:
            raise SkullVAEError("model registry not found", path)
        return Registry(path, ())
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkullVAEError(f"cannot read the model registry ({exc})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT or not isinstance(doc.get("models"), list):
        raise SkullVAEError(f"not a model registry (expected 'format': '{REGISTRY_FORMAT}' and 'models')", path)
    entries = []
    for n, item in enumerate(doc["models"]):
        try:
            entries.append(_entry(item))
        except (KeyError, TypeError, ValueError, SkullVAEError) as exc:
            raise SkullVAEError(f"invalid registry entry #{n + 1} ({type(exc).__name__}: {exc})", path) from None
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise SkullVAEError("duplicate model names in the registry", path)
    return Registry(path, tuple(entries), str(doc.get("release_page", "")), str(doc.get("note", "")))


def _entry(item: dict) -> RegistryEntry:
    sha = item.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha)):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha!r}")
    grid = item.get("grid")
    return RegistryEntry(
        name=check_name(str(item["name"])),
        version=str(item["version"]),
        url=str(item["url"]),
        sha256=None if sha is None else str(sha).lower(),
        size=None if item.get("size") is None else _non_negative(item["size"], "size"),
        unpacked_size=None
        if item.get("unpacked_size") is None
        else _non_negative(item["unpacked_size"], "unpacked_size"),
        released=bool(item.get("released", False)),
        kind=str(item.get("kind", "")),
        grid=None if grid is None else tuple(int(g) for g in grid),
        stages=dict(item.get("stages") or {}),
        training_data=str(item.get("training_data", "")),
        split=dict(item.get("split") or {}),
        licence=str(item.get("licence", "")),
        metrics=item.get("metrics"),
        description=str(item.get("description", "")),
        recipe=str(item.get("recipe", "")),
    )


def _non_negative(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of bytes, got {value!r}")
    return value
