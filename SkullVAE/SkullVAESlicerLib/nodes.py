"""MRML node work of the SkullVAE module: only ``slicer`` MRML classes and ``vtk`` (no Qt).

Runs inside Slicer and under the Qt-free ``slicer-core`` wheel (tests, headless). Files are
read and written with Slicer's own storage nodes, so the RAS↔LPS conversion happens
where Slicer does it, never by hand. Every helper takes the scene from the nodes it is given.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import vtk


def createCoreScene():
    """A scene with application, segmentations and subject hierarchy logics registered.

    For use outside the Slicer application (slicer-core wheel: tests, plain-Python batch),
    in the way trame-slicer sets up its scene. Returns ``(scene, logics dict)``; keep the
    logics referenced as long as the scene is used.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    appLogic.GetColorLogic().SetMRMLScene(scene)
    appLogic.GetColorLogic().AddDefaultColorNodes()
    segLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    segLogic.SetMRMLScene(scene)
    segLogic.SetMRMLApplicationLogic(appLogic)
    appLogic.SetModuleLogic("Segmentations", segLogic)
    shLogic = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    shLogic.SetMRMLScene(scene)
    shLogic.SetMRMLApplicationLogic(appLogic)
    return scene, {"app": appLogic, "segmentations": segLogic, "subjectHierarchy": shLogic}


def isSegmentationNode(node) -> bool:
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def isLabelmapNode(node) -> bool:
    return node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")


def isScalarVolumeNode(node) -> bool:
    return node is not None and node.IsA("vtkMRMLScalarVolumeNode")


def ijkToRas(volumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return matrix


def readVolume(scene, path: str | os.PathLike, name: str | None = None, labelmap: bool = False):
    """Load an image file into a new volume node of ``scene`` (nothing added on failure)."""
    import slicer

    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        raise ValueError(f"{path}: cannot read this file as a volume")
    node.SetName(name or Path(path).name.split(".")[0])
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def writeVolume(volumeNode, path: str | os.PathLike) -> str:
    """Write a scalar or labelmap volume with a storage node that is not added to the scene."""
    import slicer

    if volumeNode.GetImageData() is None:
        raise ValueError(f"volume '{volumeNode.GetName()}' holds no image data")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # temporary file: speed over size
    if not storage.WriteData(volumeNode):
        raise RuntimeError(f"cannot write volume '{volumeNode.GetName()}' to {path}")
    return str(path)


def nodeIds(scene) -> set[str]:
    """IDs of all nodes now in ``scene``."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def removeNodes(nodes) -> None:
    """Remove nodes (and their display/storage nodes) from their scene; None entries are skipped."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        scene = node.GetScene()
        for i in range(node.GetNumberOfDisplayNodes() if node.IsA("vtkMRMLDisplayableNode") else 0):
            display = node.GetNthDisplayNode(i)
            if display is not None:
                scene.RemoveNode(display)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
            scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)


def onlyLabelmapOnLoad(path: str | os.PathLike) -> bool:
    """Rewrite a .seg.nrrd's header (in place, through a rename) so that Slicer's reader builds no
    closed surfaces when it loads the file: ``Segmentation_ContainedRepresentationNames`` becomes
    "Binary labelmap" only. The library writes "Closed surface" there (so a file opened by hand
    shows in 3D at once), which made loading a SkullFix result build the whole skull's surface
    (seconds); the module builds the implant's at once and the skull's only when shown.
    Only for files of the module's own run folder. Returns True when the header was changed.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"\n\n")
    if end < 0:
        return False
    header = head[:end]
    changed = re.sub(rb"(?m)^(Segmentation_ContainedRepresentationNames:=)[^\n]*$", rb"\1Binary labelmap|", header)
    if changed == header:
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            src.seek(end)
            out.write(changed)
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def readSegmentationInto(segmentationNode, path: str | os.PathLike) -> None:
    """Read a .seg.nrrd into ``segmentationNode`` (its segments are replaced: :func:`clearSegments`) with
    a storage node that is not added to the scene: no copy of the labelmap is made (a SkullFix-size
    result is 60 MB). Raises RuntimeError when the file cannot be read (the node is then empty)."""
    import slicer

    clearSegments(segmentationNode)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(segmentationNode):
        raise RuntimeError(f"{path}: the completion result cannot be read as a segmentation")


def clearSegments(segmentationNode) -> None:
    """Remove every segment of ``segmentationNode``, their representations first: removing a segment
    that still shares a labelmap clears its voxels there, a pass over the whole layer per segment
    (0.1-0.2 s each on a SkullFix-size result) that is pointless when all of them go."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentation is None or segmentation.GetNumberOfSegments() == 0:
        return
    for index in range(segmentation.GetNumberOfSegments()):
        segmentation.GetNthSegment(index).RemoveAllRepresentations()
    segmentation.RemoveAllSegments()


def loadSegmentationFile(scene, path: str | os.PathLike):
    """Read a .seg.nrrd into a standalone vtkSegmentation; the scene is left as it was."""
    import slicer

    before = nodeIds(scene)
    try:
        holder = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SkullVAE result (temporary)")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not Path(path).is_file() or not storage.ReadData(holder):
            raise RuntimeError(f"{path}: the completion result cannot be read as a segmentation")
        segmentation = slicer.vtkSegmentation()
        segmentation.DeepCopy(holder.GetSegmentation())
    finally:
        removeNodes([scene.GetNodeByID(i) for i in nodeIds(scene) - before])
    return segmentation


def setReferenceGeometry(segmentationNode, reference) -> None:
    """Give ``segmentationNode`` a reference image geometry: a serialized one (text), a volume's own
    (its IJK-to-RAS and extent, without its parent transform: the output is placed under the same
    transform), or another segmentation's reference."""
    import slicer

    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    if isinstance(reference, str):
        geometry = reference
    elif isSegmentationNode(reference):
        geometry = reference.GetSegmentation().GetConversionParameter(name)
    else:
        geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijkToRas(reference), reference.GetImageData())
        segmentationNode.SetNodeReferenceID(
            segmentationNode.GetReferenceImageGeometryReferenceRole(), reference.GetID()
        )
    segmentationNode.GetSegmentation().SetConversionParameter(name, geometry)


def segmentIsEmpty(segmentationNode, segmentName: str) -> bool:
    """True when the named segment holds no voxel (e.g. no defect found)."""
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    image = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentation.GetSegmentIdBySegmentName(segmentName), image)
    return image.GetNumberOfPoints() == 0 or image.GetScalarRange()[1] <= 0


def placeUnder(node, parentNode) -> None:
    """Put ``node`` under ``parentNode`` in the subject hierarchy (when the scene has one)."""
    import slicer

    scene = node.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene else None
    if shNode is None:
        return
    child, parent = shNode.GetItemByDataNode(node), shNode.GetItemByDataNode(parentNode)
    if child and parent:
        shNode.SetItemParent(child, parent)


def exportSegmentStl(segmentationNode, segmentName: str, path: str | os.PathLike) -> str:
    """Write one segment's closed surface as STL (LPS, like Slicer's model files), atomically."""
    import slicer

    segmentation = segmentationNode.GetSegmentation()
    segmentId = segmentation.GetSegmentIdBySegmentName(segmentName)
    if not segmentId:
        raise ValueError(f"segmentation '{segmentationNode.GetName()}' has no segment '{segmentName}'")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".stl-", dir=final.parent))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(folder), segmentationNode, ids, "STL", True, 1.0, False
        )
        written = sorted(folder.glob("*.stl"))
        if not ok or not written:
            raise RuntimeError(f"cannot export segment '{segmentName}' as STL to {final}")
        os.replace(written[0], final)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return str(final)
