"""The defect-local implant stage: choose between the geometric rim fit and the model's implant.

``refine_implant`` runs after (or instead of) the VAE: for a cranial defect the rim fit
(:mod:`rimfit`, optionally with the mirror cue of :mod:`symmetry`) builds the implant from the
patient's own bone at the original resolution; a facial defect takes the learned facial
refiner's implant (:mod:`refiner`: a 3D U-Net on a 1 mm face crop) when one is given; where
neither applies (a facial defect without a refiner, or no enclosed vault hole) the atlas implant
(:mod:`atlas`: registered complete skulls of the training set) is used when an atlas set is
given, else the model's implant is kept. Every result is sanity-checked
(:mod:`implant_check`) and carries its messages and per-step timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.implant.check import check_implant
from SkullVAELib.implant.rimfit import RimFitConfig, rim_fit
from SkullVAELib.io.image import SkullImage


@dataclass
class RefinedImplant:
    """implant: bool (I, J, K), disjoint from the patient's bone; source: "rim fit",
    "rim fit + mirror", "learned", "atlas", "model" or "none"; holes: rimfit.Hole list; messages: warnings for
    the user; timings: seconds per step."""

    implant: np.ndarray
    source: str
    holes: list = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def refine_implant(
    skull: SkullImage,
    model_implant: np.ndarray | None = None,
    defect: str = "cranial",
    refine: bool = True,
    symmetry: bool = False,
    cfg: RimFitConfig | None = None,
    atlas=None,
    atlas_cfg=None,
    progress: ProgressCallback | None = None,
    refiner=None,
) -> RefinedImplant:
    """The final implant for ``skull`` (its mask is never modified).

    Args:
        model_implant: bool (I, J, K) implant of the VAE completion, or None (geometry only).
        defect: "cranial" or "facial" (the rim fit is for cranial defects).
        refine: run the rim fit (False: the model's implant, checked).
        symmetry: use the mirror image about the mid-sagittal plane where it covers the hole.
        atlas: an :class:`atlas.AtlasSet` for defects the rim fit cannot fill (``atlas_cfg``:
            an :class:`atlas.AtlasConfig`); None keeps the model's implant there.
        progress: ``progress("atlas", fraction, message)`` while the atlas implant is built.
        refiner: a :class:`refiner.infer.FacialRefiner` for facial defects (before the atlas).
    """
    timings: dict[str, float] = {}
    messages: list[str] = []
    fallback = np.zeros(skull.shape, dtype=bool) if model_implant is None else np.asarray(model_implant, bool)
    fallback = fallback & ~skull.mask
    source = "model" if model_implant is not None else "none"
    if not refine:
        messages += check_implant(fallback, skull.voxel_volume_mm3)
        return RefinedImplant(fallback, source, [], messages, timings)
    if defect == "facial":
        if refiner is not None:
            return _learned_fill(skull, refiner, timings, progress)
        if atlas is not None:
            return _atlas_fill(skull, atlas, atlas_cfg, [], timings, progress=progress)
        messages.append("the rim fit is for cranial defects; the model's facial implant is kept")
        messages += check_implant(fallback, skull.voxel_volume_mm3)
        return RefinedImplant(fallback, source, [], messages, timings)
    transform = None
    if symmetry:
        from SkullVAELib.implant.symmetry import find_mirror_plane

        t0 = time.perf_counter()
        transform = find_mirror_plane(skull).transform()
        timings["symmetry_plane"] = time.perf_counter() - t0
    result = rim_fit(skull, cfg, mirror_transform=transform)
    timings.update({f"rimfit_{k}": v for k, v in result.timings.items()})
    if result.implant.any():
        mirrored = any(h.source != "spline" for h in result.holes)
        implant, source = result.implant, "rim fit + mirror" if mirrored else "rim fit"
    elif atlas is not None:
        return _atlas_fill(
            skull,
            atlas,
            atlas_cfg,
            result.holes,
            timings,
            ["the rim fit found no enclosed hole in the vault"],
            progress,
        )
    else:
        implant = fallback
        messages.append(
            "the rim fit found no enclosed hole in the vault; "
            + ("the model's implant is kept" if model_implant is not None else "no implant")
        )
    messages += check_implant(implant, skull.voxel_volume_mm3, result.holes)
    return RefinedImplant(implant, source, result.holes, messages, timings)


def _atlas_fill(skull, atlas, atlas_cfg, holes, timings, messages=None, progress=None) -> RefinedImplant:
    """The atlas implant (checked), for a defect the rim fit cannot fill."""
    from SkullVAELib.implant.atlas import atlas_implant

    fill = atlas_implant(skull, atlas, atlas_cfg, progress)
    timings.update(fill.timings)
    messages = list(messages or []) + fill.messages
    messages += check_implant(fill.implant, skull.voxel_volume_mm3, expected_mm3=fill.expected_volume_mm3)
    return RefinedImplant(fill.implant, "atlas", holes, messages, timings)


def _learned_fill(skull, refiner, timings, progress=None) -> RefinedImplant:
    """The learned facial refiner's implant (checked)."""
    if progress is not None:
        progress("refiner", 0.0, "predicting the facial implant (learned refiner)")
    learned = refiner(skull)
    timings.update(learned.timings)
    messages = list(learned.messages)  # an empty implant is explained there
    if not messages:
        messages += check_implant(
            learned.implant, skull.voxel_volume_mm3, what="facial implant", expected_mm3=learned.expected_volume_mm3
        )
    return RefinedImplant(learned.implant, "learned", [], messages, timings)


def refine_completion(
    result,
    skull: SkullImage,
    symmetry: bool = False,
    keep_patient_bone: bool = True,
    cache: dict | None = None,
    atlas=None,
    atlas_cfg=None,
    progress: ProgressCallback | None = None,
    refiner=None,
) -> RefinedImplant:
    """Replace a :class:`completion.CompletionResult`'s implant by :func:`refine_implant` (in place).

    The completed skull becomes the patient's bone ∪ the refined implant (unless
    ``keep_patient_bone`` is False: the raw decoded skull stays). ``cache`` (a dict) reuses the
    rim fit or atlas implant between the γ values of a sweep (neither depends on γ). Timings are
    added to ``result.timings`` as ``refine_*``; the returned messages are for the user.
    """
    key = ("refine", bool(symmetry), result.defect, atlas is not None, refiner is not None)
    refined = None if cache is None else cache.get(key)
    if refined is None:
        refined = refine_implant(
            skull,
            result.implant.mask,
            result.defect,
            True,
            symmetry,
            atlas=atlas,
            atlas_cfg=atlas_cfg,
            progress=progress,
            refiner=refiner,
        )
        if cache is not None and _geometric(refined):
            cache[key] = refined
        for name, seconds in refined.timings.items():
            result.timings[f"refine_{name}"] = seconds
    if _geometric(refined):
        result.implant = skull.with_mask(refined.implant, title="implant")
        if keep_patient_bone:
            result.completed = skull.with_mask(skull.mask | refined.implant, title="completed skull")
    return refined


def _geometric(refined: RefinedImplant) -> bool:
    """True when the implant came from the rim fit, the learned refiner or the atlases (not from the
    model, so not from γ)."""
    return refined.source.startswith("rim fit") or refined.source in ("learned", "atlas")
