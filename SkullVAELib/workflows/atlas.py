"""Build an atlas set (complete skulls for the atlas implant) from a data set's training cases."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.config import ATLAS_SPACING_MM
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.data.layout import split_case_name
from SkullVAELib.implant.atlas import AtlasSet, build_atlas_set

BUNDLE_ATLAS = "atlas"  # MODEL/atlas/: the atlas set `skullvae complete` uses by default


def build_atlas(
    data: str | os.PathLike,
    out: str | os.PathLike,
    train_ids: Sequence[str] | None = None,
    spacing_mm: float = ATLAS_SPACING_MM,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> AtlasSet:
    """Write the complete skulls of ``data`` (its ``complete_skull/`` folder, or the folder itself)
    whose case ids are in ``train_ids`` (None: all) as an atlas set to ``out``."""
    from SkullVAELib.workflows.data import list_complete_skulls

    files = {split_case_name(p.name)[0]: p for p in list_complete_skulls(data)}
    ids = sorted(files) if train_ids is None else list(train_ids)
    missing = [i for i in ids if i not in files]
    if missing:
        raise SkullVAEError(f"no complete skull for case id(s) {', '.join(missing[:5])}", data)
    return build_atlas_set([(i, files[i]) for i in ids], out, spacing_mm, overwrite, progress)


def bundle_atlas(model: str | os.PathLike) -> Path | None:
    """``MODEL/atlas`` when that folder holds an atlas set, else None."""
    folder = Path(model) / BUNDLE_ATLAS
    return folder if (folder / "atlas.json").is_file() else None
