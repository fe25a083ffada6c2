"""``model``: the paper's latent arithmetic — z + γ·DEV decoded by the trained β-VAE's decoder;
the implant is the decoded bone outside the patient's (:mod:`SkullVAELib.vae.completion`).

The decoder's implant is cleaned on the model grid only for pieces near the patient's bone; the
Completer's shared post-processing (:mod:`SkullVAELib.implant.postprocess`) then drops what no implant
keeps: a piece far from the main one (a plugged foramen, a blob in the skull's hollow), specks.
"""

from __future__ import annotations

from typing import ClassVar

from SkullVAELib.implant.sources.base import Proposal


class ModelSource:
    name: ClassVar[str] = "model"
    uses_gamma: ClassVar[bool] = True

    def __init__(self, settings) -> None:
        self.gamma = settings.vae.gamma

    def applies(self, context) -> str | None:
        if not context.folder.has_vae:
            return "no trained model (give --model)"
        if context.settings.vae.gamma == 0:
            return "γ = 0 reconstructs the skull and adds no implant"
        bundle = context.folder.vae()
        if context.defect not in (bundle.centroids or {}):
            return f"the model has no {context.defect} centroid (run `skullvae fit-completion`)"
        return None

    def propose(self, context) -> Proposal:
        result = context.model_completion()
        return Proposal(result.implant.mask)  # the shared post-processing follows
