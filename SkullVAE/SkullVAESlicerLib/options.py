"""What one completion is asked to do, checked before anything starts (``SkullVAELogic.process``'s
arguments), and whether γ can matter for it. Only the library's torch-free vocabulary
(``SkullVAELib.core.config``); ValueError names the problem; no Qt, no slicer.
"""

from __future__ import annotations

import math

from SkullVAELib.core.config import DEFECT_CHOICES, IMPLANT_SOURCES, check_gamma  # words, γ rule (torch-free)
from SkullVAELib.core.errors import SkullVAEError

from . import nodes
from .models import resolveModelPath
from .process import sourceList

DEFECT_TYPES = DEFECT_CHOICES  # the library's vocabulary (config.py owns it)

#: The finishing options of :meth:`SkullVAELogic.process` and their ``skullvae complete`` flags (mm; 0 = off).
FINISHING = {"smoothMm": "--smooth-mm", "marginMm": "--margin-mm", "minThicknessMm": "--min-thickness-mm"}


def gammaApplies(modelPath, defect: str = "auto", sources=IMPLANT_SOURCES) -> bool:
    """Whether γ can change the implant of a run with these settings (the panel enables γ by it).

    γ weights the ``model`` source (the model's latent arithmetic): without a model, or without
    that source, it does nothing; a cranial defect takes ``rimfit``'s implant when ``rimfit`` comes
    before ``model``. Other settings may use the model.
    """
    if modelPath is None or not str(modelPath).strip() or str(modelPath).strip() == ".":
        return False
    try:
        order = sourceList(sources)
    except ValueError:
        return False
    if "model" not in order:
        return False
    return not (defect == "cranial" and "rimfit" in order[: order.index("model")])


def checkedChoices(sources, mirror: bool, selfCheck: bool = False, **finishing: float) -> dict:
    """``process()``'s implant sources, mirror, self-check and finishing (:data:`FINISHING`), checked: ValueError
    naming the problem (the upper bounds of the finishing are the library's, checked by the child)."""
    choices = {"sources": sourceList(sources), "mirror": bool(mirror), "selfCheck": bool(selfCheck)}
    for name, value in finishing.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{name} ({FINISHING[name]}) must be a length in mm >= 0 (0 = off), got {value!r}")
        choices[name] = number
    return choices


def checkedOptions(inputNode, modelPath, gamma, defect, boneThresholdHU, forceCPU, uncertainty) -> dict:
    """``process()``'s input, model (a bundle folder or an installed model's name; None/""/"." = none),
    γ and defect type, checked (ValueError naming the problem), as the run's option dict."""
    if inputNode is None:
        raise ValueError("No input selected: choose a CT volume, a labelmap or a skull segmentation")
    if not (nodes.isScalarVolumeNode(inputNode) or nodes.isSegmentationNode(inputNode)):
        raise ValueError(f"'{inputNode.GetName()}' is neither a volume nor a segmentation")
    model = None
    if modelPath is not None and str(modelPath).strip() not in ("", "."):
        model = resolveModelPath(modelPath)  # a folder, or the name of an installed model
        if not model.is_dir():
            raise ValueError(f"{model}: model folder not found")
        if not (model / "config.json").is_file():
            raise ValueError(f"{model}: not a SkullVAE model bundle (no config.json in this folder)")
    try:
        check_gamma(gamma)  # the library's rule (config.GAMMA_RANGE)
    except SkullVAEError as exc:
        raise ValueError(str(exc)) from None
    if defect not in DEFECT_TYPES:
        raise ValueError(f"defect type must be one of {', '.join(DEFECT_TYPES)}, got {defect!r}")
    return {
        "model": str(model) if model is not None else None,
        "gamma": float(gamma),
        "defect": defect,
        "boneThresholdHU": float(boneThresholdHU),
        "forceCPU": bool(forceCPU),
        "uncertainty": bool(uncertainty),
    }
