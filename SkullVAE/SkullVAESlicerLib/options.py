"""What one completion is asked to do, checked before anything starts (``SkullVAELogic.process``'s
arguments), and the panel's rules: which of its settings can matter for a run (γ, the mirror,
the self-check, the input kind and the bone threshold; the widget only applies them). Only the
library's torch-free vocabulary (``SkullVAELib.core.config``); ValueError names the problem; no Qt, no slicer.
"""

from __future__ import annotations

import math
from os import PathLike

from SkullVAELib.core.config import (  # words (INPUT_KINDS: --input-kind), γ rule (torch-free)
    DEFECT_CHOICES,
    IMPLANT_SOURCES,
    INPUT_KINDS,
    check_gamma,
)
from SkullVAELib.core.errors import SkullVAEError

from . import nodes
from .models import resolveModelPath
from .process import sourceList

DEFECT_TYPES = DEFECT_CHOICES  # the library's vocabulary (config.py owns it)

#: The implant sources that read the skull's mirror image (``--mirror``): the rim fit, and the learned
#: cranial residual (it corrects the rim fit's implant and reads the mirrored bone as one of its inputs).
MIRROR_SOURCES: tuple[str, ...] = ("residual", "rimfit")

#: The finishing options of :meth:`SkullVAELogic.process` and their ``skullvae complete`` flags (mm; 0 = off).
FINISHING = {"smoothMm": "--smooth-mm", "marginMm": "--margin-mm", "minThicknessMm": "--min-thickness-mm"}


def gammaApplies(modelPath, defect: str = "auto", sources=IMPLANT_SOURCES) -> bool:
    """Whether γ can change the implant of a run with these settings (the panel enables γ by it).

    γ weights the ``model`` source (the model's latent arithmetic): without a model, or without
    that source, it does nothing; a cranial defect takes ``rimfit``'s implant when ``rimfit`` comes
    before ``model``. Other settings may use the model.
    """
    order = _order(sources)
    if not _modelChosen(modelPath) or "model" not in order:
        return False
    return not (defect == "cranial" and "rimfit" in order[: order.index("model")])


def mirrorApplies(modelPath: str | PathLike | None, defect: str = "auto", sources=IMPLANT_SOURCES) -> bool:
    """Whether the mirror cue (``--mirror``) can change the implant of a run with these settings (the
    panel enables its checkbox by it): a source that reads it (:data:`MIRROR_SOURCES`) is on and can
    serve. Both fill cranial defects only (not ``defect`` "facial"); ``rimfit`` needs nothing more,
    ``residual`` the weights of a model folder (``modelPath`` chosen)."""
    order = _order(sources)
    if defect == "facial" or not set(MIRROR_SOURCES) & set(order):
        return False
    return "rimfit" in order or _modelChosen(modelPath)


def selfCheckApplies(defect: str = "auto", sources=IMPLANT_SOURCES) -> bool:
    """Whether the self-check (``--self-check``) can run: it checks ``rimfit``'s own fill, so ``rimfit``
    must be on and the defect may be cranial (``defect`` not "facial")."""
    return defect != "facial" and "rimfit" in _order(sources)


def inputKindFor(inputNode, inputKind: str = "auto") -> str:
    """The ``--input-kind`` of a run: a segmentation or a labelmap is written as a mask ("binary"), a
    scalar volume is read as ``inputKind`` asks (:data:`INPUT_KINDS`; "ct" forces the bone threshold on a
    scan that "auto" would take for a mask or refuse, e.g. a CBCT stored as 0..255). ValueError for
    another word."""
    if inputKind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {', '.join(INPUT_KINDS)}, got {inputKind!r}")
    if nodes.isSegmentationNode(inputNode) or nodes.isLabelmapNode(inputNode):
        return "binary"
    return inputKind


def inputKindApplies(inputVolume, inputSegmentation=None) -> bool:
    """Whether the panel's input kind is read: the input is a scalar volume, not a labelmap, and no
    segmentation replaces it (:func:`inputKindFor`)."""
    return inputSegmentation is None and nodes.isScalarVolumeNode(inputVolume) and not nodes.isLabelmapNode(inputVolume)


def boneThresholdApplies(inputVolume, inputSegmentation=None, inputKind: str = "auto") -> bool:
    """Whether the bone threshold is used: a scalar volume read as a CT ("auto" may decide so, "ct" does)."""
    return inputKindApplies(inputVolume, inputSegmentation) and inputKind != "binary"


def sourcesOf(params) -> tuple[str, ...]:
    """The implant sources switched on in the panel, in the library's order (``IMPLANT_SOURCES``):
    the parameter node has one bool field per source, named by its word."""
    return tuple(word for word in IMPLANT_SOURCES if params is not None and bool(getattr(params, word, False)))


def modelPathText(params) -> str:
    """The panel's model folder as text; "" when none (an unset pathlib.Path reads as ".")."""
    text = str(params.modelPath or "") if params is not None else ""
    return "" if text in ("", ".") else text


def _modelChosen(modelPath) -> bool:
    return modelPath is not None and str(modelPath).strip() not in ("", ".")


def _order(sources) -> tuple[str, ...]:
    """``sources`` checked (:func:`sourceList`); () for a bad list (nothing runs)."""
    try:
        return tuple(sourceList(sources))
    except ValueError:
        return ()


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


def checkedOptions(inputNode, modelPath, gamma, defect, boneThresholdHU, forceCPU, uncertainty,
                   inputKind: str = "auto") -> dict:  # fmt: skip
    """``process()``'s input, model (a bundle folder or an installed model's name; None/""/"." = none),
    γ, defect type and input kind (:func:`inputKindFor`), checked (ValueError naming the problem), as
    the run's option dict."""
    if inputNode is None:
        raise ValueError("No input selected: choose a CT volume, a labelmap or a skull segmentation")
    if inputNode.IsA("vtkMRMLModelNode"):  # a surface: Slicer's own conversion gives the segmentation
        raise ValueError(
            f"'{inputNode.GetName()}' is a model (a surface): convert it to a segmentation (Data module: right-click "
            "it, Convert model to segmentation node), or give its file to `skullvae complete`"
        )
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
        "inputKind": inputKindFor(inputNode, inputKind),
        "boneThresholdHU": float(boneThresholdHU),
        "forceCPU": bool(forceCPU),
        "uncertainty": bool(uncertainty),
    }
