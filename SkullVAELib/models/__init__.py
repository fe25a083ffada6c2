"""Pretrained models: the registry (``models.json`` here), the user's model cache, downloads and model cards.

No torch at import time (the Slicer panel lists models in its GUI process); installing a
bundle imports :mod:`SkullVAELib.bundle.model_bundle` to check that it loads.
"""

from SkullVAELib.models.card import read_model_card, render_model_card, write_model_card, write_training_card
from SkullVAELib.models.download import DownloadCancelled, download_file, sha256_file
from SkullVAELib.models.registry import Registry, RegistryEntry, load_registry
from SkullVAELib.models.store import (
    InstalledModel,
    download_model,
    install_model,
    installed_models,
    model_path,
    models_home,
    remove_model,
    resolve_model,
)

__all__ = [
    "DownloadCancelled",
    "InstalledModel",
    "Registry",
    "RegistryEntry",
    "download_file",
    "download_model",
    "install_model",
    "installed_models",
    "load_registry",
    "model_path",
    "models_home",
    "read_model_card",
    "remove_model",
    "render_model_card",
    "resolve_model",
    "sha256_file",
    "write_model_card",
    "write_training_card",
]
