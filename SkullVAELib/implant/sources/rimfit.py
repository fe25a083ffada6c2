"""``rimfit``: the geometric rim fit — the implant continued across the hole from the patient's own
bone at the original resolution (:mod:`SkullVAELib.implant.rimfit`); no trained model needed."""

from __future__ import annotations

from typing import ClassVar

from SkullVAELib.implant.sources.base import Proposal


class RimFitSource:
    name: ClassVar[str] = "rimfit"
    uses_gamma: ClassVar[bool] = False

    def __init__(self, settings) -> None:
        self.settings = settings.rimfit

    def applies(self, context) -> str | None:
        if context.defect != "cranial":
            return f"the rim fit is for cranial defects (this is a {context.defect} defect)"
        return None

    def propose(self, context) -> Proposal:
        result = context.rim_fit()
        messages = list(result.messages) or (
            [] if result.holes else ["the rim fit found no enclosed hole in the vault"]
        )
        return Proposal(
            result.implant,
            variant=result.cue,
            holes=list(result.holes),
            messages=messages,
            postprocessed=True,
            self_check=context.self_check(),
        )
