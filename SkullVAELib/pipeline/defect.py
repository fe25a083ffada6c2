"""Which defect a skull has: given by the user, else read from its geometry, else the model's classifier."""

from __future__ import annotations

from dataclasses import dataclass

from SkullVAELib.pipeline.context import CompletionContext


@dataclass(frozen=True)
class DefectDecision:
    """defect: "cranial" or "facial"; reason: one sentence for the user; confidence in [0, 1] or None."""

    defect: str
    reason: str
    confidence: float | None = None


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
    elif context.rim_fit().holes:
        decision = DefectDecision("cranial", "cranial: an enclosed hole in the vault", None)
    elif context.folder.has_vae and context.folder.vae().centroids:
        result = context.model_completion()
        decision = DefectDecision(result.defect, f"{result.defect}: the model's classifier", result.confidence)
    else:
        decision = DefectDecision("facial", "facial: no enclosed hole in the vault, an open cut", None)
    context.cache["defect"] = decision
    return decision
