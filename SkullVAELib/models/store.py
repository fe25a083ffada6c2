"""The user's model cache: installed bundles by name, downloaded and installed atomically.

Layout under :func:`models_home` (``$SKULLVAE_HOME``, else the platform's user cache
folder, e.g. ``~/.cache/skullvae`` on Linux)::

    models/NAME/            an installed bundle (config.json, *.safetensors, model_card.*, installed.json)
    downloads/FILE.part     a partial download (resumed by the next download)

Installing unpacks the archive into a hidden temporary folder next to ``models/NAME``,
loads it with :meth:`ModelBundle.load` (so a corrupt bundle is refused), and only then
renames it into place: ``models/NAME`` is either the old bundle or the new one, never half. The
check for an installed ``NAME`` and the rename hold a lock on ``models/`` (:func:`folder_lock`), so of
two installs of one name at once without ``overwrite`` the second is refused, not silently replacing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from SkullVAELib.core.atomic import atomic_write_text, folder_lock, replace_folder
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import read_regular_bytes
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.models.archive import bundle_root, is_archive, unpack_archive, unpacked_limit
from SkullVAELib.models.download import download_file, sha256_file
from SkullVAELib.models.registry import Registry, RegistryEntry, check_name, load_registry

HOME_ENV = "SKULLVAE_HOME"
INSTALLED_FILE = "installed.json"
MAX_INSTALLED_BYTES = 1 << 20
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def models_home() -> Path:
    """``$SKULLVAE_HOME``, else the platform's user cache folder for "skullvae"."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # Slicer before its requirements are installed: the same folders by hand
        return _fallback_cache_dir()
    return Path(user_cache_dir("skullvae", appauthor=False))


def writable_home(home: Path | None = None) -> Path:
    """The model cache (``home`` or :func:`models_home`) with its ``models/`` and ``downloads/`` folders
    made; one-line SkullVAEError when it is a file or device (``SKULLVAE_HOME=/dev/null``), or read-only."""
    home = home or models_home()
    source = f"${HOME_ENV}" if os.environ.get(HOME_ENV) else "the model cache"
    for folder in (home, home / "models", home / "downloads"):
        if os.path.lexists(folder) and not folder.is_dir():
            raise SkullVAEError(f"{source} must be a folder, but this is a file or device", folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SkullVAEError(f"{source} cannot be written: {exc.strerror or exc}", folder) from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SkullVAEError(f"{source} is not writable", folder)
    return home


def _download_name(url: str) -> str:
    """A safe file name for the archive at ``url`` in ``downloads/``: its last path part when that is
    a plain name ("..", "." and names with odd characters become "model-archive")."""
    last = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last if _SAFE_FILE_NAME.match(last) and last.strip(".") else "model-archive"


def _fallback_cache_dir() -> Path:
    """What platformdirs.user_cache_dir("skullvae", appauthor=False) gives, per platform."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "skullvae" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "skullvae"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "skullvae"


@dataclass(frozen=True)
class InstalledModel:
    """A bundle in the cache: ``name``, its folder, and where it came from (installed.json)."""

    name: str
    path: Path
    version: str = ""
    sha256: str = ""
    source: str = ""


def installed_models(home: Path | None = None) -> list[InstalledModel]:
    """Installed bundles (folders with config.json), sorted by name."""
    folder = (home or models_home()) / "models"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not (path / "config.json").is_file():
            continue
        meta = _read_installed(path)
        found.append(
            InstalledModel(path.name, path, meta.get("version", ""), meta.get("sha256", ""), meta.get("source", ""))
        )
    return found


def model_path(name: str, home: Path | None = None) -> Path:
    """Folder of the installed model ``name``; SkullVAEError saying how to get it otherwise."""
    path = (home or models_home()) / "models" / check_name(name)
    if (path / "config.json").is_file():
        return path
    raise SkullVAEError(f"model {name!r} is not installed; {_how_to_get(name)}")


def resolve_model(name_or_path: str | os.PathLike, home: Path | None = None) -> Path:
    """A model folder for ``complete --model``: an existing folder as given, else an installed name."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() or os.sep in text or "/" in text or not text:
        return path  # a folder (ModelBundle.load gives the one-line error if it is not a bundle)
    try:
        return model_path(text, home)
    except SkullVAEError as exc:
        raise SkullVAEError(f"no model folder {text!r} here, and {exc.message}") from None


def remove_model(name: str, home: Path | None = None) -> Path:
    """Delete the installed model ``name``; returns the removed folder."""
    path = model_path(name, home)
    trash = path.with_name(f".{path.name}.removing-{os.getpid()}")
    os.replace(path, trash)  # the name disappears at once, even if the delete is slow
    shutil.rmtree(trash, ignore_errors=True)
    return path


def download_model(
    name: str,
    home: Path | None = None,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> Path:
    """Download, verify and install the registry model ``name``; returns its folder.

    An installed model with the registry's sha256 is kept as it is (unless ``overwrite``); an
    older download of the same entry is upgraded; a model installed under this name from
    anywhere else (the user's own) is replaced only with ``overwrite``.
    """
    registry = registry or load_registry()
    entry = registry.get(check_name(name))
    if entry is None:
        known = ", ".join(registry.names) or "none"
        raise SkullVAEError(f"no model {name!r} in the registry {registry.path} (known: {known})")
    if not entry.released:
        raise SkullVAEError(
            f"model {name!r} is not released yet: no release asset at {entry.url}; build it with the recipe "
            f"in docs/MODELS.md and install it with: skullvae models install FOLDER_OR_ARCHIVE --name {name}"
        )
    if not entry.sha256:
        raise SkullVAEError(f"registry entry {name!r} has no sha256; refusing an unverifiable download", registry.path)
    home = writable_home(home)
    current = _read_installed(home / "models" / name)
    installed = (home / "models" / name / "config.json").is_file()
    if installed and not overwrite:
        if current.get("sha256") == entry.sha256:
            return home / "models" / name
        if current.get("registry_name") != entry.name:
            raise SkullVAEError(
                f"model {name!r} is installed from {current.get('source', 'elsewhere')}, not from the registry; "
                "use --overwrite to replace it with the registry's",
                home / "models" / name,
            )
    archive = download_file(
        entry.url, home / "downloads" / entry.archive_name, entry.sha256, entry.size, progress=progress, cancel=cancel
    )
    try:
        return install_archive(archive, name, home, _meta(entry, entry.url), progress=progress, overwrite=True)
    finally:
        archive.unlink(missing_ok=True)


def install_model(
    source: str | os.PathLike,
    name: str | None = None,
    home: Path | None = None,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> Path:
    """Install a bundle from a folder, an archive file or an archive URL; returns its folder.

    The name is ``name``, else the registry entry whose sha256 matches the archive, else
    the bundle folder's name. An existing model of that name is replaced only with ``overwrite``.
    """
    registry = registry or load_registry()
    home = writable_home(home)
    text = str(source)
    if text.startswith(("http://", "https://", "file://")):
        entry = next((e for e in registry.entries if e.url == text), None)
        archive = download_file(
            text, home / "downloads" / _download_name(text), entry.sha256 if entry else None,
            entry.size if entry else None, progress=progress,
        )  # fmt: skip
        try:
            return _install_file(
                archive, name or (entry.name if entry else None), home, registry, progress, overwrite, text
            )
        finally:
            archive.unlink(missing_ok=True)
    path = Path(text).expanduser()
    if path.is_dir():
        return _install_folder(path, name, home, progress, overwrite)
    if not path.exists():
        raise SkullVAEError("no such file or folder to install", path)
    return _install_file(path, name, home, registry, progress, overwrite, str(path.resolve()))


def _install_file(archive: Path, name, home, registry: Registry, progress, overwrite, source: str) -> Path:
    if not is_archive(archive):
        raise SkullVAEError("not a model archive (.zip or .tar of a bundle folder) or a bundle folder", archive)
    digest = sha256_file(archive)
    entry = registry.by_sha256(digest)
    meta = {**(_meta(entry, source) if entry else {"source": source}), "sha256": digest}
    return install_archive(archive, name or (entry.name if entry else None), home, meta, progress, overwrite=overwrite)


def _install_folder(folder: Path, name, home: Path, progress, overwrite) -> Path:
    name = check_name(name or folder.resolve().name)
    staging = _staging(home, name)
    try:
        _copy_bundle(folder, staging / "bundle")
        return _commit(staging / "bundle", name, home, {"source": str(folder.resolve())}, progress, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_bundle(folder: Path, dest: Path) -> None:
    """Copy a bundle folder (without checkpoints and hidden files) to ``dest``; one-line SkullVAEError naming
    the first file that cannot be copied (a dangling link, a FIFO, an unreadable file, a full disk)."""
    try:
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("checkpoints", ".*"))
    except shutil.Error as exc:  # copytree goes on past failures and lists them all: (source, target, why)
        failures = [f for f in (exc.args[0] if exc.args and isinstance(exc.args[0], list) else []) if len(f) == 3]
        source, _, why = failures[0] if failures else (folder, None, str(exc))
        raise SkullVAEError(f"cannot copy this file of the bundle, not installed ({why})", source) from None
    except OSError as exc:
        raise SkullVAEError(f"cannot copy the bundle folder, not installed ({exc.strerror or exc})", folder) from None


def install_archive(
    archive: str | os.PathLike,
    name: str | None,
    home: Path,
    meta: dict,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> Path:
    """Unpack ``archive``, check that it loads, and rename it to ``home/models/NAME``.

    An installed model of that name is replaced only with ``overwrite``.
    """
    archive = Path(archive)
    staging = _staging(home, name or "archive")
    try:
        if progress is not None:
            progress("install", 0.0, f"unpacking {archive.name}")
        limit = unpacked_limit(archive.stat().st_size, meta.get("unpacked_size"))
        unpack_archive(archive, staging / "unpacked", max_bytes=limit)
        try:
            root = bundle_root(staging / "unpacked")
        except SkullVAEError as exc:
            raise SkullVAEError(exc.message, archive) from None
        if not name:  # the bundle's folder name inside the archive, else the archive's name
            name = root.name if root != staging / "unpacked" else archive.name.split(".")[0]
        name = check_name(name)
        return _commit(root, name, home, meta, progress, overwrite, label=archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(root: Path, name: str, home: Path, meta: dict, progress, overwrite: bool, label=None) -> Path:
    from SkullVAELib.bundle.model_bundle import ModelBundle  # torch: imported only when a bundle is installed

    if progress is not None:
        progress("install", 0.5, f"checking that {name} loads")
    try:
        ModelBundle.load(root)
    except SkullVAEError as exc:
        where = label or exc.path
        raise SkullVAEError(f"not a valid model bundle, not installed ({exc})", where) from None
    dest = home / "models" / name
    info = {"name": name, "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
    atomic_write_text(root / INSTALLED_FILE, json.dumps(info, indent=2) + "\n")
    with folder_lock(home / "models"):  # check and rename as one step: a concurrent install of NAME waits
        if (dest / "config.json").is_file() and not overwrite:
            raise SkullVAEError(
                f"model {name!r} is already installed; use --overwrite to replace it, or --name to pick another name",
                dest,
            )
        replace_folder(root, dest)
    if progress is not None:
        progress("install", 1.0, f"installed {name}")
    return dest


def _staging(home: Path, name: str) -> Path:
    folder = home / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.installing-", dir=folder))


def _meta(entry: RegistryEntry, source: str) -> dict:
    meta = {"version": entry.version, "sha256": entry.sha256, "source": source, "registry_name": entry.name}
    return {**meta, "unpacked_size": entry.unpacked_size} if entry.unpacked_size else meta


def _read_installed(folder: Path) -> dict:
    """``installed.json`` of an installed model ({} when absent or not JSON); a FIFO or device there
    is refused in one line instead of hanging the reader."""
    path = folder / INSTALLED_FILE
    if not os.path.lexists(path):
        return {}
    try:
        doc = json.loads(read_regular_bytes(path, MAX_INSTALLED_BYTES, "installed.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _how_to_get(name: str) -> str:
    registry = load_registry()
    entry = registry.get(name)
    if entry is None:
        return "see `skullvae models list`, or pass a model folder"
    if entry.released:
        return f"run: skullvae models download {name}"
    return (
        "it is in the registry but not released yet; build it with docs/MODELS.md and run: "
        f"skullvae models install FOLDER --name {name}"
    )
