"""Training skulls on the refiner's grid, packed small enough to send to a GPU machine.

``pack_lps_grids`` (needs SimpleITK) writes one ``.npz``: per case id the complete skull on a
1 mm LPS grid as packed bits, its shape and origin. ``load_lps_grids`` reads it with numpy
alone (no pickle).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError


def pack_lps_grids(
    complete_paths: dict[str, Path],
    out: str | os.PathLike,
    spacing_mm: float = 1.0,
    progress: Callable[[str, float, str], None] | None = None,
) -> None:
    """Write the complete skulls ``{case id: path}`` on ``spacing_mm`` LPS grids to ``out`` (.npz)."""
    from SkullVAELib.core.atomic import atomic_path
    from SkullVAELib.implant.learned.lps_grid import to_lps_grid
    from SkullVAELib.io.image import read_skull

    arrays: dict[str, np.ndarray] = {"spacing": np.array(float(spacing_mm))}
    for n, (case_id, path) in enumerate(sorted(complete_paths.items())):
        if progress is not None:
            progress("pack", n / len(complete_paths), f"case {case_id}")
        fraction, grid = to_lps_grid(read_skull(path, kind="binary"), spacing_mm)
        arrays[f"{case_id}_bits"] = np.packbits(fraction >= 0.5)
        arrays[f"{case_id}_shape"] = np.array(grid.shape, dtype=np.int64)
        arrays[f"{case_id}_origin"] = np.array(grid.origin, dtype=np.float64)
    with atomic_path(Path(out), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def _stored_ids(packed) -> list[str]:
    """The case ids in an open :func:`pack_lps_grids` file (``np.load``'s NpzFile), sorted."""
    return sorted(k[: -len("_bits")] for k in packed.files if k.endswith("_bits"))


def packed_ids(path: str | os.PathLike) -> list[str]:
    """The case ids stored in :func:`pack_lps_grids`' file, sorted (nothing is unpacked)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return _stored_ids(f)
    except (OSError, ValueError) as exc:
        raise SkullVAEError(f"not a packed refiner grid file ({exc})", path) from None


def load_lps_grids(
    path: str | os.PathLike, ids: Sequence[str] | None = None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
    """({case id: (bool (X, Y, Z), origin (3,) mm)}, spacing mm) from :func:`pack_lps_grids`' file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            spacing = float(f["spacing"])
            stored = _stored_ids(f)
            missing = sorted(set(ids or ()) - set(stored))
            if missing:
                raise SkullVAEError(f"no skull {', '.join(missing)} in the packed grids", path)
            out = {}
            for case_id in ids if ids is not None else stored:
                shape = tuple(int(v) for v in f[f"{case_id}_shape"])
                bits = np.unpackbits(f[f"{case_id}_bits"], count=int(np.prod(shape)))
                out[case_id] = (bits.reshape(shape).astype(bool), f[f"{case_id}_origin"].astype(np.float64))
    except (OSError, ValueError, KeyError) as exc:
        raise SkullVAEError(f"not a packed refiner grid file ({exc})", path) from None
    return out, spacing
