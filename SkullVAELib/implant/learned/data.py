"""Training skulls on the refiner's grid, packed small enough to send to a GPU machine.

``pack_lps_grids`` (needs SimpleITK) writes one ``.npz``: per case id the complete skull on a
1 mm LPS grid as packed bits, its shape and origin, and with ``fractions`` its anti-aliased bone
fraction too (uint8, 255 = all bone; the input of a refiner with ``soft_input``).
``load_lps_grids`` and ``load_lps_fractions`` read it with numpy alone (no pickle).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError

FRACTION_SCALE = 255  # a packed bone fraction's uint8 value for "all bone"


def pack_lps_grids(
    complete_paths: dict[str, Path],
    out: str | os.PathLike,
    spacing_mm: float = 1.0,
    progress: Callable[[str, float, str], None] | None = None,
    fractions: bool = False,
) -> None:
    """Write the complete skulls ``{case id: path}`` on ``spacing_mm`` LPS grids to ``out`` (.npz);
    with ``fractions``, each skull's anti-aliased bone fraction on the same grid as well."""
    from SkullVAELib.core.atomic import atomic_path
    from SkullVAELib.implant.learned.lps_grid import bone_fraction_onto, to_lps_grid
    from SkullVAELib.io.image import read_skull

    arrays: dict[str, np.ndarray] = {"spacing": np.array(float(spacing_mm))}
    for n, (case_id, path) in enumerate(sorted(complete_paths.items())):
        if progress is not None:
            progress("pack", n / len(complete_paths), f"case {case_id}")
        skull = read_skull(path, kind="binary")
        fraction, grid = to_lps_grid(skull, spacing_mm)
        arrays[f"{case_id}_bits"] = np.packbits(fraction >= 0.5)
        arrays[f"{case_id}_shape"] = np.array(grid.shape, dtype=np.int64)
        arrays[f"{case_id}_origin"] = np.array(grid.origin, dtype=np.float64)
        if fractions:
            arrays[f"{case_id}_fraction"] = np.round(bone_fraction_onto(skull, grid) * FRACTION_SCALE).astype(np.uint8)
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


def load_lps_fractions(path: str | os.PathLike, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{case id: uint8 (X, Y, Z) anti-aliased bone fraction (:data:`FRACTION_SCALE` = all bone)} from a
    file :func:`pack_lps_grids` wrote with ``fractions``; refuses a file packed without them."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [i for i in ids if f"{i}_fraction" not in f.files]
            if missing:
                raise SkullVAEError(
                    f"holds no bone fractions for skull {', '.join(missing[:3])} (pack it with --soft-input)", path
                )
            return {i: f[f"{i}_fraction"].reshape(tuple(int(v) for v in f[f"{i}_shape"])) for i in ids}
    except (OSError, ValueError, KeyError) as exc:
        raise SkullVAEError(f"not a packed refiner grid file ({exc})", path) from None
