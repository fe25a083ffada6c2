"""Import the authors' published weights as a model bundle (no completion data yet)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from SkullVAELib.core.errors import SkullVAEError

if TYPE_CHECKING:
    from SkullVAELib.bundle.model_bundle import ModelBundle


def import_reference_model(
    vae: str | os.PathLike,
    out: str | os.PathLike,
    decoder: str | os.PathLike | None = None,
    grid: Sequence[int] | None = None,
    beta: float | None = None,
    overwrite: bool = False,
) -> ModelBundle:
    """Convert the VAE (and optionally the retrained decoder) state dicts into the bundle folder ``out``.

    Refuses to replace an existing bundle unless ``overwrite``, and a destination that cannot be
    a folder, before reading the weights. Nothing is unpickled.
    """
    from SkullVAELib.bundle.model_bundle import CONFIG_FILE
    from SkullVAELib.bundle.reference import import_reference
    from SkullVAELib.io.outputs import check_output_folder

    out = Path(out)
    if (out / CONFIG_FILE).exists() and not overwrite:
        raise SkullVAEError("--out already holds a model bundle; give --overwrite to replace it", out)
    check_output_folder(out, "--out")
    bundle = import_reference(vae, decoder, grid=None if grid is None else tuple(grid), beta=beta)
    bundle.save(out)
    return bundle
