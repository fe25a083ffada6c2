"""Training samples of the cranial residual: crops of real defects and of defects drawn afresh.

A sample is one defect on one skull: the rim fit (with the mirror cue) is run on the defective
skull at its original resolution, exactly as ``skullvae complete`` runs it, and the crop around
the rim fit's piece that meets the true implant holds the inputs (:mod:`.features`), the true
implant's fraction and an ``ignore`` mask (voxels kept out of the loss). Crops are stored
``pad`` voxels wider on every side, so that training can shift them.

Kinds per skull: ``real`` (the data set's own defective skull and implant) and one per defect
style of :data:`~SkullVAELib.data.recipes.CRANIAL_STYLES` (``skullfix``, ``skullbreak``,
``irregular``: :func:`SkullVAELib.data.defects.cranial_defect` drawn on the complete skull).
Skulls with a defect but no ground truth (``skullfix_test``) give ``extra`` samples: a new defect
of one of the styles is cut on the defective skull; its existing hole (the rim fit's implant there,
grown by ``exclude_mm``) is kept out of the loss, and a draw that comes within ``exclude_mm`` of it
is drawn again.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SkullVAELib.data.recipes import CRANIAL_STYLES
from SkullVAELib.implant.residual.config import ResidualConfig
from SkullVAELib.implant.residual.features import crop_grid, mask_on_grid, residual_inputs, signed_distance
from SkullVAELib.io.image import SkullImage

SAMPLE_KINDS = ("real", *CRANIAL_STYLES, "extra")
PAD = 4  # voxels stored beyond the crop on every side
# the settings a pool's inputs are made for: the crop's grid and the scale of its distance channel
POOL_KEYS = ("spacing_mm", "crop_shape", "sdf_clip_mm")


def _rim_fit(skull: SkullImage) -> tuple[np.ndarray, np.ndarray]:
    from SkullVAELib.implant.rimfit import rim_fit
    from SkullVAELib.implant.symmetry import find_mirror_plane

    transform = find_mirror_plane(skull).transform()
    return rim_fit(skull, mirror_transform=transform).implant, transform


def _piece_meeting(skull: SkullImage, implant: np.ndarray, truth: np.ndarray) -> np.ndarray | None:
    """The LPS centroid (mm) of the implant's piece that overlaps ``truth`` most (None: none does)."""
    from SkullVAELib.implant.residual.features import piece_centres

    labels, n = ndimage.label(implant)
    if n == 0:
        return None
    overlap = np.bincount(labels[truth], minlength=n + 1)[1:]
    if overlap.max() == 0:
        return None
    piece = labels == int(np.argmax(overlap)) + 1
    centres = piece_centres(skull, piece, min_mm3=0.0)
    return centres[0] if centres else None


def make_sample(
    defective: SkullImage,
    truth: np.ndarray,
    cfg: ResidualConfig,
    exclude: np.ndarray | None = None,
    exclude_mm: float = 10.0,
) -> dict | None:
    """One sample (arrays of crop shape + 2·PAD): ``inputs`` float16 (3, ...), ``target`` uint8
    (fraction × 255), ``ignore`` bool; None when the rim fit misses the defect or (with ``exclude``)
    the defect comes within ``exclude_mm`` of the excluded region."""
    implant, transform = _rim_fit(defective)
    centre = _piece_meeting(defective, implant, truth)
    if centre is None:
        return None
    grid = crop_grid(centre, cfg, PAD)
    sdf, box = signed_distance(defective, implant, cfg.sdf_clip_mm)
    inputs = residual_inputs(defective, sdf, box, grid, cfg, transform)
    target = mask_on_grid(defective, truth, grid)
    ignore = np.zeros(grid.shape, bool)
    if exclude is not None:
        grow = max(1, int(round(exclude_mm / cfg.spacing_mm)))
        ignore = ndimage.binary_dilation(mask_on_grid(defective, exclude, grid) > 0.5, iterations=grow)
        if np.count_nonzero(ignore & (target > 0.5)) > 0.02 * max(np.count_nonzero(target > 0.5), 1):
            return None
    return {
        "inputs": inputs.astype(np.float16),
        "target": np.round(np.clip(target, 0, 1) * 255).astype(np.uint8),
        "ignore": ignore,
    }


def drawn_samples(complete: SkullImage, seed: int, cfg: ResidualConfig, kinds=("skullfix", "skullbreak")):
    """(kind, sample) for a defect of each of ``kinds`` drawn on ``complete`` with ``seed``."""
    from SkullVAELib.data.defects import cranial_defect

    for kind in kinds:
        defective, implant = cranial_defect(complete, seed, style=kind)
        sample = make_sample(defective, implant.mask, cfg)
        if sample is not None:
            yield kind, sample


def extra_samples(defective: SkullImage, seeds, cfg: ResidualConfig, tries: int = 4, styles=CRANIAL_STYLES):
    """A sample per seed of ``seeds`` (None where no draw worked): a new defect cut on a skull that
    has one already, its hole (the rim fit's implant there, fitted once) kept out of the loss. The
    ``styles`` take turns by seed and attempt, so every style is drawn whatever the first try gives."""
    from SkullVAELib.data.defects import redraws

    existing, _ = _rim_fit(defective)
    for n, seed in enumerate(seeds):
        sample = None
        for _, twice, implant in redraws(defective, seed, styles, tries, first=n):
            sample = make_sample(twice, implant.mask, cfg, exclude=existing)
            if sample is not None:
                break
        yield sample


def save_pool(path, rows: list[tuple[str, str, dict]], cfg: ResidualConfig) -> None:
    """Write ``rows`` of (case id, kind, sample) to ``path`` (.npz, no pickle), atomically."""
    from pathlib import Path

    from SkullVAELib.core.atomic import atomic_path

    if not rows:
        from SkullVAELib.core.errors import SkullVAEError

        raise SkullVAEError("no residual training sample was made (did the rim fit miss every defect?)", path)
    arrays = {
        "inputs": np.stack([r[2]["inputs"] for r in rows]),
        "target": np.stack([r[2]["target"] for r in rows]),
        "ignore": np.stack([r[2]["ignore"] for r in rows]),
        "ids": np.array([r[0] for r in rows]),
        "kinds": np.array([r[1] for r in rows]),
        "config": np.array(cfg.to_json()),
        "pad": np.array(PAD),
    }
    with atomic_path(Path(path), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)  # mostly empty space: about 10x smaller, for a GPU machine


def _made_for(cfg: ResidualConfig) -> str:
    """:data:`POOL_KEYS` of ``cfg`` in words."""
    return f"{cfg.spacing_mm:g} mm crops of {cfg.crop_shape}, distances / {cfg.sdf_clip_mm:g} mm"


def load_pools(paths, cfg: ResidualConfig) -> dict[str, np.ndarray]:
    """The samples of one or more pool files, concatenated; refused (one line) when a pool was
    made for another grid than ``cfg``'s (spacing, crop) or another ``sdf_clip_mm`` (its distance
    channel is divided by that: a residual trained on it would read other inputs at inference)."""
    from SkullVAELib.core.errors import SkullVAEError

    parts: dict[str, list] = {k: [] for k in ("inputs", "target", "ignore", "ids", "kinds")}
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as f:
                made = ResidualConfig.from_json(str(f["config"]))
                same = all(getattr(made, key) == getattr(cfg, key) for key in POOL_KEYS)
                if not same or int(f["pad"]) != PAD:
                    raise SkullVAEError(f"made for {_made_for(made)}, not {_made_for(cfg)}", path)
                for key in parts:
                    parts[key].append(f[key])
        except (OSError, ValueError, KeyError) as exc:
            raise SkullVAEError(f"not a residual sample pool ({exc})", path) from None
    return {k: np.concatenate(v) for k, v in parts.items()}
