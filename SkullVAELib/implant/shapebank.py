"""A bank of complete skulls' ray maps: the shape cue where the patient's mirror gives none.

Inside a hole the rim fit knows only the rim, and a thin-plate spline continues it as flat as the
rim allows; the skull itself is not flat there (on SkullFix's defects, which cross the mid-plane
where the mirror has no bone, the spline's outer surface lay 0.4 mm low on average and up to 2 mm
off: docs/results/issue-24-2026-12-03.md, "Complete skulls as the shape cue"). A bank holds, per complete training
skull, the outer radius and the bone thickness of every ray from its own cranial centre (the same
(α, β) grid as the rim fit's, LPS directions). For a hole, the members whose outer radius matches the
patient's rim best (after removing a quadratic in the hole's gnomonic plane: only the shape counts,
not the size or the tilt) are averaged and take the mirror's place: the rim's spline carries what
they do not explain (:func:`SkullVAELib.implant.rimfit.fill_hole`).

The bank is built once from complete skulls (``skullvae build-shapes``) and kept in the model folder
as ``shapes.safetensors`` (float32 maps plus JSON metadata; never unpickled). It reproduces the
training skulls' vaults at the ray grid's resolution: keep it as private as the data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimspline import gnomonic
from SkullVAELib.io.image import SkullImage

SHAPES_FORMAT = "skullvae-shape-bank"
MIN_RIM_SEEN = 0.95  # a member must have bone on this share of the rim rays ...
MIN_HOLE_SEEN = 0.98  # ... and of the hole's rays to be compared at all


@dataclass(eq=False)
class ShapeBank:
    """Ray maps of complete skulls.

    Attributes:
        step_deg: the angular grid step (the rim fit's ``step_deg``).
        r_out: float32 (N, Nα, Nβ) outer radius (mm) per member and ray; NaN where no bone.
        thickness: float32 (N, Nα, Nβ) bone thickness (mm) of the outermost layer.
        ids: the members' case ids (N,).
    """

    step_deg: float
    r_out: np.ndarray
    thickness: np.ndarray
    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def skull_ray_map(skull: SkullImage, step_deg: float = raycast.RIM_STEP_DEG) -> raycast.RayMap:
    """The ray map of a complete skull from its own cranial centre (every ray cast)."""
    return raycast.cast(skull, raycast.cranial_centre(skull), step_deg)


def build_shape_bank(
    skulls: Iterable[tuple[str, SkullImage]],
    step_deg: float = raycast.RIM_STEP_DEG,
    progress: ProgressCallback | None = None,
    total: int | None = None,
) -> ShapeBank:
    """A bank of the ``(case id, complete skull)`` pairs (about 0.3 s per skull after reading)."""
    r_out, thickness, ids = [], [], []
    for n, (case_id, skull) in enumerate(skulls):
        rays = skull_ray_map(skull, step_deg)
        r_out.append(rays.r_out.astype(np.float32))
        thickness.append(rays.thickness.astype(np.float32))
        ids.append(str(case_id))
        if progress is not None:
            progress("shapes", (n + 1) / total if total else 0.0, f"cast skull {case_id}")
    if not ids:
        raise SkullVAEError("no complete skull to build a shape bank from")
    return ShapeBank(float(step_deg), np.stack(r_out), np.stack(thickness), tuple(ids))


def save_shape_bank(bank: ShapeBank, path: str | os.PathLike) -> None:
    """Write ``bank`` to ``path`` (safetensors), atomically."""
    from safetensors.numpy import save_file

    from SkullVAELib.core.atomic import atomic_path

    tensors = {"r_out": np.ascontiguousarray(bank.r_out), "thickness": np.ascontiguousarray(bank.thickness)}
    metadata = {"format": SHAPES_FORMAT, "step_deg": repr(bank.step_deg), "ids": json.dumps(list(bank.ids))}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_shape_bank(path: str | os.PathLike) -> ShapeBank:
    """The bank written by :func:`save_shape_bank`; one-line errors naming ``path`` otherwise."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise SkullVAEError("no such shape bank file", path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for a truncated or foreign file
        raise SkullVAEError(f"not a safetensors shape bank ({exc})", path) from None
    if metadata.get("format") != SHAPES_FORMAT:
        raise SkullVAEError(f"not a shape bank (format {metadata.get('format')!r})", path)
    try:
        step, ids = float(metadata["step_deg"]), tuple(json.loads(metadata["ids"]))
        r_out, thickness = tensors["r_out"], tensors["thickness"]
    except (KeyError, ValueError, TypeError) as exc:
        raise SkullVAEError(f"the shape bank's contents are missing or damaged ({exc})", path) from None
    alpha, beta = raycast.angle_grid(step)
    expected = (len(ids), len(alpha), len(beta))
    if r_out.shape != expected or thickness.shape != expected:
        raise SkullVAEError(f"the shape bank's maps are {r_out.shape}, not {expected} for {len(ids)} skulls", path)
    return ShapeBank(step, r_out.astype(np.float32), thickness.astype(np.float32), ids)


def _quadratic(xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)


def rank_members(bank: ShapeBank, outer: np.ndarray, rim: np.ndarray, hole: np.ndarray, direction: np.ndarray):
    """``(rms mm, member index, scale)`` per comparable member, best first.

    ``outer``: the patient's outer radius (Nα, Nβ); ``rim``, ``hole``: bool (Nα, Nβ) rim rays and hole
    rays; ``direction``: the hole's mean direction (3,). A member is scaled to the patient's rim
    (median ratio) and scored by the rim residual's RMS after a least-squares quadratic in the hole's
    gnomonic plane (what the rim's spline would absorb anyway)."""
    dirs = raycast.grid_directions(bank.step_deg)
    design = _quadratic(gnomonic(dirs[rim], direction))
    patient = outer[rim].astype(np.float64)
    ranked = []
    for m in range(len(bank)):
        member = bank.r_out[m][rim].astype(np.float64)
        ok = np.isfinite(member) & np.isfinite(patient)
        if ok.mean() < MIN_RIM_SEEN or np.isfinite(bank.r_out[m][hole]).mean() < MIN_HOLE_SEEN:
            continue
        scale = float(np.median(patient[ok] / member[ok]))
        residual = patient[ok] - scale * member[ok]
        coef, *_ = np.linalg.lstsq(design[ok], residual, rcond=None)
        ranked.append((float(np.sqrt(np.mean((residual - design[ok] @ coef) ** 2))), m, scale))
    return sorted(ranked)


def shape_cue(
    bank: ShapeBank, raymap: raycast.RayMap, rim: np.ndarray, hole: np.ndarray, direction: np.ndarray, k: int
) -> raycast.RayMap | None:
    """The mean ray map of the ``k`` members nearest on the rim (outer radius scaled to the patient),
    or None when no member can be compared (another angular grid, or none sees the hole)."""
    if abs(bank.step_deg - raymap.step_deg) > 1e-9:
        return None
    best = rank_members(bank, raymap.r_out, rim, hole, direction)[:k]
    if not best:
        return None
    outer = mean_where_seen([scale * bank.r_out[m] for _, m, scale in best])
    thickness = mean_where_seen([bank.thickness[m] for _, m, _ in best])
    return raycast.RayMap(raymap.centre, raymap.step_deg, np.isfinite(outer), outer, outer - thickness)


def mean_where_seen(maps: list[np.ndarray]) -> np.ndarray:
    """float32 per-ray mean over the maps that have bone there (NaN where none has)."""
    stack = np.stack(maps)
    seen = np.isfinite(stack)
    count = seen.sum(axis=0)
    total = np.where(seen, stack, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
