"""Shared fixtures of the model-store tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    """A saved tiny aggregated bundle (the `test` preset) with complete and cranial centroids."""
    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import network_preset

    bundle = new_bundle(network_preset("test"), aggregated=True, seed=0)
    bundle.set_centroids({"complete": np.zeros(8), "cranial": np.full(8, 0.1)})
    folder = tmp_path_factory.mktemp("bundle") / "tiny"
    bundle.save(folder)
    return folder
