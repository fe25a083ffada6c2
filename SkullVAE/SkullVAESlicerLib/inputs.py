"""A segmentation or a label map as the completion's input: which segments or labels are bone, and the grid they
are written on.

Only ``slicer`` MRML classes and ``vtk`` (no Qt; runs under the slicer-core wheel).

- Segments (:func:`boneSegmentIds`): those asked for (``segmentIds``, ids or names); else the only one;
  else the visible ones (a hidden "Brain" or "Tumour" segment is not bone); a segmentation never shown (read
  from a file by the batch script: no display node) has no visible ones to go by, and several are refused.
- Labels (:func:`checkLabelChoice`): a labelmap volume of several labels (a skull and a brain) with none chosen is
  refused, naming them; read together as bone, the brain would close a cranial hole.
- Grid (:func:`exportGeometry`): the segmentation's reference geometry when it has one (the volume it
  was segmented on). Without one (e.g. a ``.seg.nrrd`` read by hand), the bone's own lattice over the
  segments' stored extent and the bone's box padded by :data:`BONE_MARGIN_MM` on every side: the
  implant fills bone that is missing, so a grid cut tight around the remaining bone clips it (a vertex
  defect lowers the box's top by the height of the missing cap).

Everything stays in the segmentation's own coordinates (no parent transform is applied): the result
is placed under the input's parent transform again (``outputs.py``).
"""

from __future__ import annotations

import math
import os

import vtk

from SkullVAELib.core.config import MISSING_CAP_MM

from . import nodes

#: Room (mm) added on each side of the remaining bone's box when the segmentation has no reference
#: geometry: the library's room for the cap a defect removes (``core.config.MISSING_CAP_MM``).
BONE_MARGIN_MM = MISSING_CAP_MM


def checkLabelChoice(inputNode, labels=()) -> None:
    """Refuse (ValueError naming them) a labelmap volume ``inputNode`` that holds several labels when ``labels``
    (the chosen label values) is empty; any other input passes."""
    if not nodes.isLabelmapNode(inputNode) or labels:
        return
    import slicer

    from SkullVAELib.io.values import nonzero_values

    values = slicer.util.arrayFromVolume(inputNode)  # a view of the node's voxels
    held = nonzero_values(values, values != 0)
    if len(held) > 1:
        display = inputNode.GetDisplayNode()
        colors = display.GetColorNode() if display is not None else None
        named = [f"{v} {colors.GetColorName(v)}" if colors is not None else str(v) for v in held[:8]]
        raise ValueError(
            f"'{inputNode.GetName()}' is a label map of {len(held)} labels ({', '.join(named)}"
            f"{', ...' if len(held) > 8 else ''}): choose the skull's label (segmentIds in the Python console), or "
            "convert it to a segmentation (Data module: right-click it) and show only the skull's segments"
        )


def segmentNames(segmentationNode, ids) -> str:
    """The names of the segments ``ids``, quoted, for messages: "'Skull', 'Mandible'"."""
    segmentation = segmentationNode.GetSegmentation()
    return ", ".join(f"'{segmentation.GetSegment(i).GetName()}'" for i in ids)


def boneSegmentIds(segmentationNode, segmentIds=None) -> list[str]:
    """The ids of the segments that are the skull: ``segmentIds`` (one id or name, or a sequence of
    them); None: the only segment, else the visible ones (several and no display node: refused). ValueError
    naming the problem."""
    segmentation = segmentationNode.GetSegmentation()
    name = segmentationNode.GetName()
    every = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if not every:
        raise ValueError(f"segmentation '{name}' has no segments; segment the skull first")
    if segmentIds is not None and not isinstance(segmentIds, str) and not list(segmentIds):
        segmentIds = None  # an empty choice: the default rule
    if segmentIds is not None:
        chosen = []
        for wanted in [segmentIds] if isinstance(segmentIds, str) else list(segmentIds):
            found = wanted if wanted in every else segmentation.GetSegmentIdBySegmentName(str(wanted))
            if not found:
                raise ValueError(
                    f"segmentation '{name}' has no segment {wanted!r} (it has {segmentNames(segmentationNode, every)})"
                )
            chosen += [found] if found not in chosen else []
        return chosen
    if len(every) == 1:
        return every
    display = segmentationNode.GetDisplayNode()
    if display is None:  # never shown (a file read headless): every segment would be bone, a brain's too
        raise ValueError(
            f"segmentation '{name}' holds {len(every)} segments ({segmentNames(segmentationNode, every)}); choose "
            "the skull's (segmentIds, or --segment NAME in the batch script)"
        )
    visible = [i for i in every if display.GetSegmentVisibility(i)]
    if not visible:
        raise ValueError(
            f"segmentation '{name}': every segment is hidden; show the skull's segment(s) or choose them "
            f"(segmentIds) among {segmentNames(segmentationNode, every)}"
        )
    return visible


def _idArray(ids: list[str]):
    """The segment ids as the vtkStringArray the segmentation's methods take."""
    array = vtk.vtkStringArray()
    for segmentId in ids:
        array.InsertNextValue(segmentId)
    return array


def _geometryImage(text: str):
    import slicer

    image = slicer.vtkOrientedImageData()
    if not text or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(text, image, False):
        return None
    return image


def exportGeometry(segmentationNode, ids: list[str]):
    """The grid (a vtkOrientedImageData without voxels) the segments ``ids`` are written on: see the
    module's docstring. None when they hold no voxel."""
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    reference = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    geometry = _geometryImage(reference)
    if geometry is not None:
        return geometry
    array = _idArray(ids)
    bone = _geometryImage(
        segmentation.DetermineCommonLabelmapGeometry(segmentation.EXTENT_UNION_OF_EFFECTIVE_SEGMENTS, array)
    )
    stored = _geometryImage(segmentation.DetermineCommonLabelmapGeometry(segmentation.EXTENT_UNION_OF_SEGMENTS, array))
    if bone is None or bone.IsEmpty():
        return None
    spacing = bone.GetSpacing()
    box, whole = bone.GetExtent(), stored.GetExtent() if stored is not None else bone.GetExtent()
    extent = []
    for axis in range(3):
        pad = math.ceil(BONE_MARGIN_MM / spacing[axis] - 1e-9)
        extent += [min(box[2 * axis] - pad, whole[2 * axis]), max(box[2 * axis + 1] + pad, whole[2 * axis + 1])]
    bone.SetExtent(extent)
    return bone


def writeSegmentationAsLabelmap(segmentationNode, path: str | os.PathLike, segmentIds=None) -> tuple[list[str], str]:
    """Write the bone segments (:func:`boneSegmentIds`) as one binary labelmap (1 = bone) on
    :func:`exportGeometry`'s grid, with a storage node; the scene is left as it was.

    Returns ``(the segment ids used, the grid serialized as a reference image geometry)``. Raises
    ValueError for a segmentation without segments or whose bone segments hold no voxel.
    """
    import slicer

    ids = boneSegmentIds(segmentationNode, segmentIds)
    name = segmentationNode.GetName()
    geometry = exportGeometry(segmentationNode, ids)
    array, ones = _idArray(ids), vtk.vtkIntArray()
    for _ in ids:
        ones.InsertNextValue(1)
    merged = slicer.vtkOrientedImageData()
    ok = geometry is not None and segmentationNode.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, array, ones
    )
    if not ok or merged.GetNumberOfPoints() == 0 or merged.GetScalarRange()[1] <= 0:
        raise ValueError(
            f"segmentation '{name}' is empty: no voxel belongs to the segment(s) {segmentNames(segmentationNode, ids)}"
        )
    scene = segmentationNode.GetScene()
    before = nodes.nodeIds(scene)
    try:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} SkullVAE input")
        slicer.vtkSlicerSegmentationsModuleLogic.CreateLabelmapVolumeFromOrientedImageData(merged, labelmap)
        nodes.writeVolume(labelmap, path)
    finally:
        nodes.removeNodes([scene.GetNodeByID(i) for i in nodes.nodeIds(scene) - before])
    return ids, slicer.vtkSegmentationConverter.SerializeImageGeometry(merged)
