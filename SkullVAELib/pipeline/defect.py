"""Which defect a skull has: given by the user, else read from its geometry, else the model's classifier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from SkullVAELib.implant.vault import FACE_ANTERIOR_Y, FACE_TOP_Z, on_vault
from SkullVAELib.pipeline.context import CompletionContext


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

    "auto": an enclosed hole in the vault (the rim fit's hole finder) means cranial; otherwise the
    trained model's classifier decides when there is a model, else the open cut is taken as facial.
    """
    if "defect" in context.cache:
        return context.cache["defect"]
    given = context.settings.defect
    if given != "auto":
        decision = DefectDecision(given, f"{given} (given)", 1.0)
    elif vault_holes(holes := context.rim_fit().holes_in_lps()):
        decision = DefectDecision("cranial", "cranial: an enclosed hole in the vault", None)
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


def off_vault_note(holes: Sequence) -> str:
    """Where the largest of ``holes`` (none on the vault) points, in words, or "" without holes: an enclosed hole
    in the face's sector or below the vault is no cranial defect as the scan lies, but a frontal vault hole of a
    head pitched forehead-down (20-30°) lies there too, which the user can tell at a glance."""
    if not holes:
        return ""
    _, y, z = np.asarray(max(holes, key=lambda h: h.solid_angle_sr).direction, dtype=float)
    elevation = np.degrees(np.arcsin(np.clip(z, -1.0, 1.0)))
    from_front = np.degrees(np.arccos(np.clip(-y, -1.0, 1.0)))  # LPS: anterior is -y
    where = "into the face's sector" if (y < FACE_ANTERIOR_Y and z < FACE_TOP_Z) else "below the vault"
    return (
        f"the enclosed hole found points {where} ({elevation:.0f}° above the horizontal, {from_front:.0f}° from "
        "straight ahead, as scanned); a frontal vault defect of a head pitched forehead-down lies there too"
    )
