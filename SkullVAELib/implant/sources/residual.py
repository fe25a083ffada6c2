"""``residual``: the rim fit corrected inside the hole by a learned 3D U-Net
(:mod:`SkullVAELib.implant.residual`); needs ``residual.safetensors`` in the model folder. Where
the network asks for no change, the rim fit's implant is kept bit for bit, and the patient's bone
is never changed."""

from __future__ import annotations

from typing import ClassVar

from SkullVAELib.implant.sources.base import Proposal


class ResidualSource:
    name: ClassVar[str] = "residual"
    uses_gamma: ClassVar[bool] = False

    def __init__(self, settings) -> None:
        self.device = settings.device

    def applies(self, context) -> str | None:
        if context.defect != "cranial":
            return f"the cranial residual is for cranial defects (this is a {context.defect} defect)"
        if not context.folder.has_residual:
            return "no cranial residual (train one with `skullvae train-residual`)"
        if not context.rim_fit().implant.any():
            return "the rim fit has no implant to correct"
        return None

    def propose(self, context) -> Proposal:
        rim = context.rim_fit()
        residual = context.folder.residual(self.device)
        context.progress("residual", 0.0, "correcting the rim fit (learned residual)")
        transform = context.mirror_transform() if context.settings.rimfit.mirror else None
        result = residual(context.skull, rim.implant, transform)
        notes = context.join_notes + [
            f"the learned residual changed {result.changed_mm3 / 1000:.1f} ml of the rim fit's implant"
        ]
        if residual.info.get("interrupted"):
            notes.append("the residual's training was interrupted: its weights are the best before the stop")
        return Proposal(
            result.implant,
            variant=rim.cue,
            holes=list(rim.holes),
            messages=notes,
            timings=dict(result.timings),
            postprocessed=True,
        )
