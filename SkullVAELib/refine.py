"""The defect-local implant stage: choose between the geometric rim fit and the model's implant.

``refine_implant`` runs after (or instead of) the VAE: for a cranial defect the rim fit
(:mod:`rimfit`, optionally with the mirror cue of :mod:`symmetry`) builds the implant from the
patient's own bone at the original resolution; where it does not apply (a facial defect, or no
enclosed vault hole) the model's implant is kept. Every result is sanity-checked
(:mod:`implant_check`) and carries its messages and per-step timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from SkullVAELib.image import SkullImage
from SkullVAELib.implant_check import check_implant
from SkullVAELib.rimfit import RimFitConfig, rim_fit


@dataclass
class RefinedImplant:
    """implant: bool (I, J, K), disjoint from the patient's bone; source: "rim fit",
    "rim fit + mirror", "model" or "none"; holes: rimfit.Hole list; messages: warnings for
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
) -> RefinedImplant:
    """The final implant for ``skull`` (its mask is never modified).

    Args:
        model_implant: bool (I, J, K) implant of the VAE completion, or None (geometry only).
        defect: "cranial" or "facial" (the rim fit is for cranial defects).
        refine: run the rim fit (False: the model's implant, checked).
        symmetry: use the mirror image about the mid-sagittal plane where it covers the hole.
    """
    timings: dict[str, float] = {}
    messages: list[str] = []
    fallback = np.zeros(skull.shape, dtype=bool) if model_implant is None else np.asarray(model_implant, bool)
    fallback = fallback & ~skull.mask
    source = "model" if model_implant is not None else "none"
    if not refine or defect == "facial":
        if refine:
            messages.append("the rim fit is for cranial defects; the model's facial implant is kept")
        messages += check_implant(fallback, skull.voxel_volume_mm3)
        return RefinedImplant(fallback, source, [], messages, timings)
    transform = None
    if symmetry:
        from SkullVAELib.symmetry import find_mirror_plane

        t0 = time.perf_counter()
        transform = find_mirror_plane(skull).transform()
        timings["symmetry_plane"] = time.perf_counter() - t0
    result = rim_fit(skull, cfg, mirror_transform=transform)
    timings.update({f"rimfit_{k}": v for k, v in result.timings.items()})
    if result.implant.any():
        mirrored = any(h.source != "spline" for h in result.holes)
        implant, source = result.implant, "rim fit + mirror" if mirrored else "rim fit"
    else:
        implant = fallback
        messages.append(
            "the rim fit found no enclosed hole in the vault; "
            + ("the model's implant is kept" if model_implant is not None else "no implant")
        )
    messages += check_implant(implant, skull.voxel_volume_mm3, result.holes)
    return RefinedImplant(implant, source, result.holes, messages, timings)


def refine_completion(
    result, skull: SkullImage, symmetry: bool = False, keep_patient_bone: bool = True, cache: dict | None = None
) -> RefinedImplant:
    """Replace a :class:`completion.CompletionResult`'s implant by :func:`refine_implant` (in place).

    The completed skull becomes the patient's bone ∪ the refined implant (unless
    ``keep_patient_bone`` is False: the raw decoded skull stays). ``cache`` (a dict) reuses the
    rim fit between the γ values of a sweep (it does not depend on γ). Timings are added to
    ``result.timings`` as ``refine_*``; the returned messages are for the user.
    """
    key = ("refine", bool(symmetry))
    refined = None if cache is None else cache.get(key)
    if refined is None or result.defect == "facial":
        refined = refine_implant(skull, result.implant.mask, result.defect, refine=True, symmetry=symmetry)
        if cache is not None and refined.source.startswith("rim fit"):
            cache[key] = refined
        for name, seconds in refined.timings.items():
            result.timings[f"refine_{name}"] = seconds
    if refined.source.startswith("rim fit"):
        result.implant = skull.with_mask(refined.implant, title="implant")
        if keep_patient_bone:
            result.completed = skull.with_mask(skull.mask | refined.implant, title="completed skull")
    return refined
