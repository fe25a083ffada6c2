"""``learned``: the learned facial refiner — a 3D U-Net on a 1 mm face crop
(:mod:`SkullVAELib.implant.learned`); MONAI is imported only when it runs."""

from __future__ import annotations

from typing import ClassVar

from SkullVAELib.implant.sources.base import Proposal


class LearnedSource:
    name: ClassVar[str] = "learned"
    uses_gamma: ClassVar[bool] = False

    def __init__(self, settings) -> None:
        self.device = settings.device

    def applies(self, context) -> str | None:
        if context.defect != "facial":
            return f"the learned refiner is for facial defects (this is a {context.defect} defect)"
        if not context.folder.has_refiner:
            return "no learned refiner (train one with `skullvae train-refiner`, or give --refiner FILE)"
        return None

    def propose(self, context) -> Proposal:
        refiner = context.folder.refiner(self.device)
        context.progress("learned", 0.0, "predicting the facial implant (learned refiner)")
        learned = refiner(context.skull)
        notes = list(learned.messages)
        if getattr(refiner, "info", {}).get("interrupted"):
            notes.append("the learned refiner's training was interrupted: its weights are the best before the stop")
        return Proposal(
            learned.implant,
            expected_mm3=learned.expected_volume_mm3,
            messages=notes,
            timings=dict(learned.timings),
            postprocessed=True,
        )
