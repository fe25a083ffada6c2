"""Where a completion's result goes: the node it fills, and where that node sits in the scene.

Only ``slicer`` MRML classes and ``vtk`` (no Qt; runs under the slicer-core wheel).

- The output node (:func:`outputFor`): the one asked for, unless it holds another input's result:
  the panel keeps the last output selected, and a second Apply on another patient must not overwrite
  (and keep the name of) the first patient's result. Every result node records its input
  (:data:`INPUT_ATTRIBUTE`); a node without that mark (made by the user) is filled as asked.
- Placement (:func:`loadResult`): the result lies on the input's own grid (its untransformed
  geometry: the files hold it) and is put under the input's parent transform, so it overlays the input
  wherever a registration or a manual alignment moved it; in the subject hierarchy it sits under the input.
"""

from __future__ import annotations

from pathlib import Path

from . import nodes, results

#: Node attribute of a result segmentation: the ID of the input node it was computed from.
INPUT_ATTRIBUTE = "SkullVAE.InputNodeID"


def outputFor(inputNode, outputNode, log=None):
    """The segmentation a run on ``inputNode`` fills: ``outputNode``, or None (a new node is made) when
    ``outputNode`` holds the result of another input. ``log(text)`` is told when that happens."""
    if outputNode is None:
        return None
    madeFor = outputNode.GetAttribute(INPUT_ATTRIBUTE)
    if not madeFor or madeFor == inputNode.GetID():
        return outputNode
    scene = outputNode.GetScene()
    other = scene.GetNodeByID(madeFor) if scene is not None else None
    if log is not None:
        owner = f"'{other.GetName()}'" if other is not None else "another input"
        log(
            f"'{outputNode.GetName()}' holds the result of {owner}: the result of '{inputNode.GetName()}' "
            f"goes to a new segmentation '{inputNode.GetName()} completion'"
        )
    return None


def placeLike(node, inputNode) -> None:
    """Put ``node`` under ``inputNode``'s parent transform (or none) and under ``inputNode`` in the
    subject hierarchy."""
    node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
    nodes.placeUnder(node, inputNode)


def loadResult(inputNode, outputNode, folder, uncertainty: bool = False, geometry: str | None = None):
    """Read ``folder/result.seg.nrrd`` into ``outputNode`` (None: a new "<input> completion") and show
    it the module's way (``results.showResult``) on the input's geometry (``geometry``: a serialized
    reference geometry to use instead, the grid a segmentation input was written on), placed like the
    input (:func:`placeLike`) and marked as its result; with ``uncertainty``, ``folder/uncertainty.nrrd``
    into a new volume placed the same way.

    Returns ``(output, uncertainty volume or None)``. On failure the nodes made here are removed again.
    """
    scene = inputNode.GetScene()
    folder = Path(folder)
    nodes.onlyLabelmapOnLoad(folder / "result.seg.nrrd")  # our temporary: surfaces built by us, lazily
    created, output, volume = [], outputNode, None
    try:
        if output is None:
            output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{inputNode.GetName()} completion")
            created.append(output)
        # read into the output itself (an existing output's segments are replaced; no 60 MB copies)
        nodes.readSegmentationInto(output, folder / "result.seg.nrrd")
        placeLike(output, inputNode)
        results.showResult(output, geometry or inputNode)
        output.SetAttribute(INPUT_ATTRIBUTE, inputNode.GetID())
        if uncertainty:
            volume = nodes.readVolume(scene, folder / "uncertainty.nrrd", f"{inputNode.GetName()} uncertainty")
            created.append(volume)
            placeLike(volume, inputNode)
    except BaseException:
        nodes.removeNodes(created)
        raise
    return output, volume
