"""Shared pytest fixtures.

The real SkullFix cases live outside the repository (../shared/data/skullfix, or
$SKULLVAE_SKULLFIX); tests that need them are marked ``skullfix`` and skip cleanly
where the folder is absent, so the suite passes on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def _skullfix_candidates() -> list[Path]:
    env = os.environ.get("SKULLVAE_SKULLFIX")
    found = [Path(env)] if env else []
    found += [REPO_ROOT.parent / "shared" / "data" / "skullfix"]
    return found


@pytest.fixture(scope="session")
def skullfix_dir() -> Path:
    """The SkullFix folder (complete_skull/, defective_skull/, implant/), or skip."""
    for candidate in _skullfix_candidates():
        if (candidate / "complete_skull").is_dir():
            return candidate
    pytest.skip("SkullFix cases not found (../shared/data/skullfix or $SKULLVAE_SKULLFIX); real-data test skipped")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run on small grids; one thread keeps them deterministic and leaves the other core free."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
