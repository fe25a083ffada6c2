"""The completion result the Slicer way: non-overlapping segments, standard terminology, one colour.

The module shows two segments that do not overlap, in one labelmap layer: **Patient bone**
and **Implant** (as ``skullvae complete`` writes them; a result of an older library, "Completed
skull" + "Implant", is split); "Completed skull" is added only on request (:func:`addCompletedSkull`). Every segment
carries a DICOM/SNOMED CT terminology entry (segment tag ``TerminologyEntry``, the string
Slicer's Terminologies module reads and writes), and the implant has the project's one
implant colour (``SkullVAELib.core.config.IMPLANT_COLOR``).

3D: the implant's closed surface is built at once, per segment (:func:`createSegmentSurfaces`);
the patient bone's (a whole skull, seconds) only when asked (Slicer's Show 3D, or
``CreateClosedSurfaceRepresentation``). Only ``slicer`` MRML classes and ``vtk``: runs under
the slicer-core wheel.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support

from SkullVAELib.core.config import IMPLANT_COLOR, QUALITY_FLOOR, REVIEW_BELOW

from . import nodes

PATIENT_BONE = "Patient bone"
IMPLANT = "Implant"
COMPLETED_SKULL = "Completed skull"  # in the result file; in the scene only on request
BONE_COLOR = (0.89, 0.85, 0.79)  # Slicer's "bone" tint
COMPLETED_SKULL_COLOR = (0.70, 0.74, 0.80)
SEGMENT_COLORS = {PATIENT_BONE: BONE_COLOR, IMPLANT: tuple(IMPLANT_COLOR), COMPLETED_SKULL: COMPLETED_SKULL_COLOR}
SEGMENT_IDS = {PATIENT_BONE: "PatientBone", IMPLANT: "Implant", COMPLETED_SKULL: "CompletedSkull"}

# Terminology entries: context~category~type~type modifier~anatomic context~region~region modifier,
# each code as scheme^value^meaning (SCT = SNOMED CT, the DICOM coding scheme designator).
_CRANIUM = "SCT^89546000^Bone structure of cranium"
TERMINOLOGY = {
    PATIENT_BONE: "Segmentation category and type - 3D Slicer General Anatomy list"
    f"~SCT^123037004^Anatomical Structure~{_CRANIUM}~^^~Anatomic codes - DICOM master list~^^~^^",
    COMPLETED_SKULL: "Segmentation category and type - 3D Slicer General Anatomy list"
    f"~SCT^123037004^Anatomical Structure~{_CRANIUM}~^^~Anatomic codes - DICOM master list~^^~^^",
    # an implant (SCT 40388003, a physical object) placed in the cranium
    IMPLANT: "Segmentation category and type - DICOM master list"
    f"~SCT^260787004^Physical object~SCT^40388003^Implant~^^~Anatomic codes - DICOM master list~{_CRANIUM}~^^",
}
LABELMAP = "Binary labelmap"
#: The library's quality bands: every implant delivered under ``REVIEW_BELOW`` is flagged, under ``DOUBTFUL_BELOW``
#: (the Completer's floor) as doubtful.
DOUBTFUL_BELOW = QUALITY_FLOOR
CLOSED_SURFACE = "Closed surface"


#: What the panel says about each implant source of the result JSON's "implant_source".
SOURCE_TEXT = {
    "residual": "the rim fit corrected by the learned cranial residual",
    "rimfit": "the rim fit (geometry of the defect's edge; no model)",
    "learned": "the learned facial refiner",
    "atlas": "the atlas skulls",
    "model": "the model's latent arithmetic (γ)",
    "none": "no source (nothing was found to fill)",
}


#: What the panel says about the rim fit's cue (the result JSON's "implant_variant").
CUE_TEXT = {
    "mirror": "the patient's mirrored side",
    "shapes": "the training skulls nearest on the rim (the model's shape bank)",
    "model": "the shape model of the training skulls' vaults",
}


def sourceText(source: str | None, variant: str | None = None) -> str:
    """Words for an ``implant_source`` value and its ``implant_variant`` ("mirror", "shapes", "model",
    several joined by ", ", or ""); unknown values are shown as they are."""
    text = SOURCE_TEXT.get(source or "", source or "unknown")
    cues = [CUE_TEXT.get(c.strip(), c.strip()) for c in (variant or "").split(",") if c.strip()]
    return text + (f", following {' and '.join(cues)}" if cues else "")


def resultSummary(result: dict, output, hadModel: bool) -> dict:
    """The child's result JSON plus what the panel shows, measured on the loaded segments of ``output``.

    ``implantSource``: the result's "implant_source" (rimfit, learned, atlas, model); a result
    without it (an older library) came from the model when there was one. ``gammaUsed``: the
    result's "gamma_used", else whether the model's arithmetic made the implant.
    """
    source = result.get("implant_source") or ("model" if hadModel else "rimfit")
    summary = dict(result)
    summary["implantSource"] = source
    summary["gammaUsed"] = bool(result.get("gamma_used", source == "model"))
    summary["implantVoxels"], summary["implantVolumeMm3"] = segmentSize(output, IMPLANT)
    return summary


def qualityText(summary: dict) -> str:
    """The implant-quality score for the panel's volume line ("quality 0.92 (weakest: thickness)": its
    lowest component in the result's ``implant_quality_parts``; ", check before use" under
    :data:`REVIEW_BELOW` or where the result asks for a review, ``implant_review``; ", doubtful, check before
    use" under :data:`DOUBTFUL_BELOW`), or "" when the result has none (quality not computed, an older library)."""
    score = summary.get("implant_quality")
    if score is None:
        return ""
    components = (summary.get("implant_quality_parts") or {}).get("components") or {}
    components = {name: value for name, value in components.items() if value is not None}
    weakest = f" (weakest: {min(components, key=components.get)})" if components else ""
    review = ", check before use" if score < REVIEW_BELOW or summary.get("implant_review") else ""
    review = ", doubtful, check before use" if score < DOUBTFUL_BELOW else review
    return f"quality {score:.2f}{weakest}{review}"


def volumeText(summary: dict) -> str:
    """The panel's volume line: "Implant volume: 49.6 cm³; quality 0.92 (weakest: thickness)", then
    "; self-check DSC 0.95" when the rim fit's self-check ran, or "" before a result (no ``implantVolumeMm3``)."""
    volume = summary.get("implantVolumeMm3")
    if volume is None:
        return ""
    parts = [f"Implant volume: {volume / 1000:.1f} cm³", qualityText(summary)]
    estimate = (summary.get("implant_self_check") or {}).get("dsc")
    if estimate is not None:
        parts.append(f"self-check DSC {estimate:.2f}")
    return "; ".join(part for part in parts if part)


def summaryLines(summary: dict, defect: str) -> list[str]:
    """The log lines of a finished completion: its timings, an empty implant, what made the implant,
    the implant-quality score's one-line explanation (its steps at the rim, how far it reaches), and the
    rim fit's self-check on the skull's intact vault when it was asked for."""
    timings = summary.get("timings") or {}
    numbers = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if isinstance(v, (int, float)))
    lines = [f"Timings (s): {numbers}"] if numbers else []
    if not summary["implantVoxels"]:
        lines.append("Note: the implant is empty (no defect was found to fill).")
    lines.append(
        f"Completion done: {summary.get('defect', defect)} defect; implant "
        f"{summary['implantVolumeMm3'] / 1000:.1f} cm³ from "
        f"{sourceText(summary['implantSource'], summary.get('implant_variant'))}"
    )
    for key in ("implant_quality_note", "implant_self_check_note"):
        note = summary.get(key) or ""
        if note and summary["implantVoxels"]:
            lines.append(note[0].upper() + note[1:])
    return lines


def _mask(segmentation, name: str, like=None) -> tuple[np.ndarray, object]:
    """``(bool array in the layer image's memory order (K, J, I), that image)`` of segment ``name``;
    resampled onto ``like`` (a vtkOrientedImageData) when given and its geometry differs."""
    import slicer

    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
    image = segment.GetRepresentation(LABELMAP)
    if like is not None and not _sameGrid(image, like):
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(image, like, resampled)
        image = resampled
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    dims = image.GetDimensions()
    return scalars.reshape(dims[2], dims[1], dims[0]) == segment.GetLabelValue(), image


def _sameGrid(a, b) -> bool:
    ma, mb = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    a.GetImageToWorldMatrix(ma)
    b.GetImageToWorldMatrix(mb)
    same = all(abs(ma.GetElement(r, c) - mb.GetElement(r, c)) < 1e-9 for r in range(4) for c in range(4))
    return same and a.GetExtent() == b.GetExtent()


def splitResult(segmentation) -> None:
    """Make a result file's segments "Patient bone" + "Implant" in one labelmap layer (in place).

    The library writes "Patient bone" and "Implant" (and "Completed skull" when asked); an older
    one wrote "Completed skull" (patient bone ∪ implant) and "Implant": then the completed skull's
    implant voxels are cleared and the segment renamed. Raises RuntimeError when a segment is missing.
    """
    has = {n: bool(segmentation.GetSegmentIdBySegmentName(n)) for n in (PATIENT_BONE, IMPLANT, COMPLETED_SKULL)}
    if not has[IMPLANT] or not (has[PATIENT_BONE] or has[COMPLETED_SKULL]):
        missing = [n for n in (PATIENT_BONE, IMPLANT) if not has[n]]
        raise RuntimeError(f"the completion result lacks the segment(s) {', '.join(missing)}")
    if not has[PATIENT_BONE]:
        bone = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(COMPLETED_SKULL))
        boneImage = bone.GetRepresentation(LABELMAP)
        implant, _ = _mask(segmentation, IMPLANT, like=boneImage)
        scalars = numpy_support.vtk_to_numpy(boneImage.GetPointData().GetScalars())
        dims = boneImage.GetDimensions()
        voxels = scalars.reshape(dims[2], dims[1], dims[0])
        voxels[implant & (voxels == bone.GetLabelValue())] = 0
        boneImage.Modified()
        bone.SetName(PATIENT_BONE)
    segmentation.CollapseBinaryLabelmaps(False)


def styleSegments(segmentation) -> None:
    """Colour and terminology of every known segment; ids stay as they are."""
    for name, color in SEGMENT_COLORS.items():
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if not segmentId:
            continue
        segment = segmentation.GetSegment(segmentId)
        segment.SetColor(*color)
        segment.SetTag(segment.GetTerminologyEntryTagName(), TERMINOLOGY[name])


def showResult(outputNode, referenceNode) -> None:
    """Make the result file just read into ``outputNode`` (:func:`nodes.readSegmentationInto`) the
    module's result, in place (no copy of the labelmap): split and styled segments, the input's
    geometry, shown in 3D with the implant's surface built at once.

    Args:
        outputNode: vtkMRMLSegmentationNode holding the segments of a result file.
        referenceNode: the input node, whose own geometry (no parent transform) the output takes, or a
            serialized reference image geometry (:func:`nodes.setReferenceGeometry`).
    """
    segmentation = outputNode.GetSegmentation()
    splitResult(segmentation)
    styleSegments(segmentation)
    nodes.setReferenceGeometry(outputNode, referenceNode)
    outputNode.CreateDefaultDisplayNodes()
    display = outputNode.GetDisplayNode()
    display.SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
    display.SetVisibility3D(True)
    createSegmentSurfaces(outputNode, [IMPLANT])


def fillResultSegmentation(outputNode, segmentation, referenceNode) -> None:
    """Replace the segments of ``outputNode`` by a copy of ``segmentation`` (a vtkSegmentation read
    from a result file) and :func:`showResult` them."""
    outputNode.GetSegmentation().DeepCopy(segmentation)
    showResult(outputNode, referenceNode)


def createSegmentSurfaces(segmentationNode, names) -> None:
    """Build the closed surface of the named segments only (the others stay as they are).

    Uses the segmentation's own conversion parameters (smoothing, decimation), so a later
    ``CreateClosedSurfaceRepresentation`` of the whole segmentation gives the same surface. Each
    segment is converted from its own voxels cropped to their box plus a voxel of background
    (:func:`croppedLabelmap`): the same surface as from the whole shared labelmap, without passes
    over the whole image (a SkullFix-size result is 512×512×224 voxels for a few cm³ of implant).
    """
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    rule = _surfaceRule(segmentation)
    joint = rule.GetConversionParameter(rule.GetJointSmoothingParameterName()) not in ("", "0")
    for name in names:
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if not segmentId:
            continue
        segment = segmentation.GetSegment(segmentId)
        cropped = None if joint else croppedLabelmap(segment)
        if cropped is None:  # empty, or smoothed jointly with its neighbours: the whole labelmap
            rule.PreConvert(segmentation)
            rule.Convert(segment)
            rule.PostConvert(segmentation)
            continue
        holder = slicer.vtkSegmentation()
        holder.SetSourceRepresentationName(LABELMAP)
        part = slicer.vtkSegment()
        part.SetLabelValue(segment.GetLabelValue())
        part.AddRepresentation(LABELMAP, cropped)
        holder.AddSegment(part, segmentId)
        rule.PreConvert(holder)
        rule.Convert(part)
        rule.PostConvert(holder)
        segment.AddRepresentation(CLOSED_SURFACE, part.GetRepresentation(CLOSED_SURFACE))


def _surfaceRule(segmentation):
    """A labelmap-to-surface conversion rule with ``segmentation``'s conversion parameters."""
    import slicer

    rule = slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()
    for getter in (
        "GetSmoothingFactorParameterName",
        "GetDecimationFactorParameterName",
        "GetComputeSurfaceNormalsParameterName",
        "GetJointSmoothingParameterName",
        "GetConversionMethodParameterName",
        "GetSurfaceNetInternalSmoothingParameterName",
    ):
        if hasattr(rule, getter):
            parameter = getattr(rule, getter)()
            value = segmentation.GetConversionParameter(parameter)
            if value:
                rule.SetConversionParameter(parameter, value)
    return rule


def croppedLabelmap(segment):
    """A copy of ``segment``'s voxels (its label value; other labels of a shared layer cleared) on
    the same grid, cropped to their box plus one voxel of background on each side (inside the
    image); None when the segment is empty."""
    import slicer

    image = segment.GetRepresentation(LABELMAP)
    if image is None or image.GetNumberOfPoints() == 0:
        return None
    dims, extent = image.GetDimensions(), image.GetExtent()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    mask = scalars.reshape(dims[2], dims[1], dims[0]) == segment.GetLabelValue()
    box = []
    for axis in (2, 1, 0):  # i, j, k: the array is (K, J, I)
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        box.append((hits[0], hits[-1]))
    crop = []
    for (low, high), start, size in zip(box, extent[::2], dims, strict=True):
        crop += [start + max(0, int(low) - 1), start + min(size - 1, int(high) + 1)]
    cropped = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.CopyImage(image, cropped, crop):
        return None
    values = numpy_support.vtk_to_numpy(cropped.GetPointData().GetScalars())
    values[values != segment.GetLabelValue()] = 0
    cropped.Modified()
    return cropped


def hasSurface(segmentationNode, name: str) -> bool:
    """True when segment ``name`` has a closed surface with at least one point."""
    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(name)
    surface = segmentation.GetSegment(segmentId).GetRepresentation(CLOSED_SURFACE) if segmentId else None
    return surface is not None and surface.GetNumberOfPoints() > 0


def segmentSize(segmentationNode, name: str) -> tuple[int, float]:
    """``(voxels, volume in mm³)`` of segment ``name`` (voxel count × voxel volume of its labelmap);
    ``(0, 0.0)`` when it is missing or empty."""
    segmentation = segmentationNode.GetSegmentation()
    if not segmentation.GetSegmentIdBySegmentName(name):
        return 0, 0.0
    mask, image = _mask(segmentation, name)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    voxel = abs(np.linalg.det(np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])))
    count = int(np.count_nonzero(mask))
    return count, float(count) * float(voxel)


def segmentVoxelCount(segmentationNode, name: str) -> int:
    """Voxels of segment ``name`` (0 when it is missing or empty)."""
    return segmentSize(segmentationNode, name)[0]


def segmentVolumeMm3(segmentationNode, name: str) -> float:
    """Volume of segment ``name`` in mm³ (voxel count × voxel volume of its labelmap)."""
    return segmentSize(segmentationNode, name)[1]


def addCompletedSkull(segmentationNode) -> str:
    """Add (or refresh) the "Completed skull" segment = patient bone ∪ implant; returns its id.

    It overlaps both others by definition, so Slicer keeps it in a layer of its own.
    """
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    bone, image = _mask(segmentation, PATIENT_BONE)
    implant, _ = _mask(segmentation, IMPLANT, like=image)
    union = slicer.vtkOrientedImageData()
    union.DeepCopy(image)
    scalars = numpy_support.vtk_to_numpy(union.GetPointData().GetScalars())
    scalars[:] = (bone | implant).ravel()
    union.Modified()
    segmentId = segmentation.GetSegmentIdBySegmentName(COMPLETED_SKULL)
    if not segmentId:
        segmentId = segmentation.AddEmptySegment(SEGMENT_IDS[COMPLETED_SKULL], COMPLETED_SKULL, COMPLETED_SKULL_COLOR)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(union, segmentationNode, segmentId, logic.MODE_REPLACE, union.GetExtent()):
        raise RuntimeError("cannot fill the 'Completed skull' segment")
    styleSegments(segmentation)
    return segmentId
