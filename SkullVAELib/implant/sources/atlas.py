"""``atlas``: complete training skulls registered to the patient fill the defect
(:mod:`SkullVAELib.implant.atlas`); for defects without a rim to continue across."""

from __future__ import annotations

from typing import ClassVar

from SkullVAELib.implant.sources.base import Proposal


class AtlasSource:
    name: ClassVar[str] = "atlas"
    uses_gamma: ClassVar[bool] = False

    def __init__(self, settings) -> None:
        self.config = settings.atlas.config

    def applies(self, context) -> str | None:
        if not context.folder.has_atlas:
            return "no atlas set (build one with `skullvae build-atlas`, or give --atlas DIR)"
        return None

    def propose(self, context) -> Proposal:
        from SkullVAELib.implant.atlas import atlas_implant

        fill = atlas_implant(context.skull, context.folder.atlas(), self.config, context.progress)
        return Proposal(
            fill.implant,
            expected_mm3=fill.expected_volume_mm3,
            messages=list(fill.messages),
            timings=dict(fill.timings),
            postprocessed=True,
        )
