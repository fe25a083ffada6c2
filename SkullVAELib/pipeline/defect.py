"""Which defect a skull has: given by the user, else read from its geometry, else the model's classifier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from SkullVAELib.implant.vault import FACE_ANTERIOR_Y, FACE_TOP_Z, on_vault
from SkullVAELib.pipeline.context import CompletionContext

# An enclosed hole that points outside the vault as scanned is still a cranial defect when the rim fit closes it as
# one (quality score at least this): the frontal vault defect of a head pitched forehead-down points there. On
# validation's vault and irregular defects pitched 15-30° forehead-down such holes were filled at quality 0.85-0.95
# (DSC 0.91-0.97); of the facial cuts of validation's and 20 training skulls pitched a further 15-35° chin-up, 10
# left an enclosed hole outside the vault, filled at 0.01-0.35, and one at 0.90 (a forehead cut, taken as cranial)
# (docs/results/issue-24-2026-12-07.md, "A pitched head's defect").
OFF_VAULT_CRANIAL_QUALITY = 0.5


@dataclass(frozen=True)
class DefectDecision:
    """defect: "cranial" or "facial"; reason: one sentence for the user; confidence in [0, 1] or None;
    ``guessed``: why "auto" took the skull for facial with neither a vault hole nor a model to ask ("" else);
    ``hole_off_vault``: that guess saw an enclosed hole, outside the vault (so the skull is not complete)."""

    defect: str
    reason: str
    confidence: float | None = None
    guessed: str = ""
    hole_off_vault: bool = False


def decide_defect(context: CompletionContext) -> DefectDecision:
    """The defect of ``context.skull`` (cached per skull).

    "auto": an enclosed hole in the vault (the rim fit's hole finder) means cranial, and so does one outside it
    that the rim fit closes as a vault defect (:func:`closed_as_vault`: a pitched head); otherwise the trained
    model's classifier decides when there is a model, else the open cut is taken as facial.
    """
    if "defect" in context.cache:
        return context.cache["defect"]
    given = context.settings.defect
    if given != "auto":
        decision = DefectDecision(given, f"{given} (given)", 1.0)
    elif vault_holes(holes := context.rim_fit().holes_in_lps()):
        decision = DefectDecision("cranial", "cranial: an enclosed hole in the vault", None)
    elif closed := closed_as_vault(context, holes):
        decision = DefectDecision("cranial", closed, None)
    elif context.folder.has_vae and context.folder.vae().centroids:
        context.defect = "auto"  # undecided: the model's completion at this γ classifies the skull
        result = context.model_completion()
        decision = DefectDecision(result.defect, f"{result.defect}: the model's classifier", result.confidence)
    else:
        off_vault = off_vault_note(holes)
        why = off_vault or "; ".join(context.rim_fit().messages) or "no enclosed hole in the vault"
        decision = DefectDecision("facial", f"taken as facial: {why}", None, why, bool(off_vault))
    context.cache["defect"] = decision
    return decision


def vault_holes(holes: Sequence) -> list:
    """The rim fit's holes (``rimfit.Hole``, LPS ``direction``) that lie on the vault (:func:`vault.on_vault`)."""
    return [h for h in holes if on_vault(h.direction)]


def closed_as_vault(context: CompletionContext, holes: Sequence) -> str:
    """The decision's reason when the rim fit closes the enclosed ``holes`` (none on the vault as scanned) as a
    vault defect: its implant scores :data:`OFF_VAULT_CRANIAL_QUALITY` or more against the skull as the vault's
    rays read it; "" otherwise, or without holes. A frontal vault defect of a head pitched forehead-down points
    into the face's sector as scanned, but its fill meets the rim as seamlessly as on an upright head; the hole a
    facial cut leaves enclosed does not."""
    if not holes:
        return ""
    implant = context.rim_fit().implant & ~context.skull.mask
    if not implant.any():
        return ""
    quality = context.implant_quality(implant, "cranial")
    if quality.score < OFF_VAULT_CRANIAL_QUALITY:
        return ""
    return (
        f"cranial: {_where(holes)}, and the rim fit closes it as a vault defect (quality {quality.score:.2f}): "
        "a head pitched in the scan"
    )


def off_vault_note(holes: Sequence) -> str:
    """Where the largest of ``holes`` (none on the vault) points, in words, or "" without holes: an enclosed hole
    in the face's sector or below the vault that the rim fit does not close as a vault defect is no cranial defect
    as the scan lies, but the user can tell a pitched head's vault defect at a glance."""
    if not holes:
        return ""
    return f"{_where(holes)}; a frontal vault defect of a head pitched forehead-down lies there too"


def _where(holes: Sequence) -> str:
    """Where the largest of ``holes`` points as scanned, in words."""
    _, y, z = np.asarray(max(holes, key=lambda h: h.solid_angle_sr).direction, dtype=float)
    elevation = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    from_front = np.degrees(np.arccos(np.clip(-y, -1.0, 1.0)))  # LPS: anterior is -y
    where = "into the face's sector" if (y < FACE_ANTERIOR_Y and z < FACE_TOP_Z) else "below the vault"
    return (
        f"the enclosed hole found points {where} ({elevation:.0f}° above the horizontal, {from_front:.0f}° from "
        "straight ahead, as scanned)"
    )
