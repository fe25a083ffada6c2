"""The implant's surface as a binary STL in physical millimetres, ready for printing.

Coordinate frame: 3D Slicer (≥ 4.11) reads STL/OBJ models as LPS unless the file says
otherwise, so the default ``coordinate_system="LPS"`` writes ITK physical space and the
model overlays the volume when both are loaded in Slicer. ``"RAS"`` negates x and y.
The full index→physical affine (origin, spacing and an oblique direction) is applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Only the VTK modules used here: `import vtk` loads all of VTK (~0.5 s per process).
from vtkmodules.util import numpy_support
from vtkmodules.util.vtkConstants import VTK_UNSIGNED_CHAR
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkPolyDataNormals, vtkReverseSense, vtkWindowedSincPolyDataFilter
from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformPolyDataFilter
from vtkmodules.vtkIOGeometry import vtkSTLWriter

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _vtk_image(mask: np.ndarray) -> vtkImageData:
    """A uint8 vtkImageData in index space (origin 0, spacing 1), padded by one empty voxel.

    The padding closes the surface where the mask touches the volume border; the padded
    image starts at index −1.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    image = vtkImageData()
    image.SetDimensions(*padded.shape)
    image.SetOrigin(-1.0, -1.0, -1.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    # VTK point order is x fastest: (K, J, I) C-order == (I, J, K) Fortran order
    scalars = numpy_support.numpy_to_vtk(padded.ravel(order="F"), deep=True, array_type=VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def implant_surface(mask: SkullImage, smooth: bool = True, coordinate_system: str = "LPS") -> vtkPolyData:
    """Triangulated surface (with point normals) of ``mask.mask`` in physical mm.

    Every triangle (right-hand winding) and normal faces out of the material: away from the
    implant on its outer shell and into the void on the wall of a void enclosed in it, so the
    signed volume is the material's, whatever the handedness of the affine.

    Args:
        mask: a binary SkullImage (I, J, K) and its geometry.
        smooth: windowed-sinc smoothing (20 iterations, pass band 0.1) of the staircase.
        coordinate_system: "LPS" (ITK, Slicer's STL default) or "RAS".
    """
    if coordinate_system not in ("LPS", "RAS"):
        raise SkullVAEError(f"coordinate_system must be LPS or RAS, got {coordinate_system!r}")
    if not mask.mask.any():
        raise SkullVAEError("the implant is empty; there is no surface to write")
    contour = vtkDiscreteFlyingEdges3D()
    contour.SetInputData(_vtk_image(mask.mask))
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    last = contour
    if smooth:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(contour.GetOutputPort())
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(0.1)
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        last = smoother
    affine = mask.index_to_physical()
    if coordinate_system == "RAS":
        affine = _LPS_TO_RAS @ affine
    transform = vtkTransform()
    transform.SetMatrix(affine.ravel().tolist())
    to_physical = vtkTransformPolyDataFilter()
    to_physical.SetTransform(transform)
    to_physical.SetInputConnection(last.GetOutputPort())
    last = to_physical
    if np.linalg.det(affine[:3, :3]) < 0:  # a mirroring affine turns every triangle inside out
        reverse = vtkReverseSense()
        reverse.SetInputConnection(to_physical.GetOutputPort())
        reverse.ReverseCellsOn()
        reverse.ReverseNormalsOff()
        last = reverse
    # The contour's triangles already face away from the material on every shell, the walls of an
    # enclosed void included (they face into the void). No re-orienting: AutoOrientNormalsOn turns
    # each closed shell to face away from its own inside, i.e. a void's wall into the material.
    normals = vtkPolyDataNormals()
    normals.SetInputConnection(last.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.Update()
    return normals.GetOutput()


def write_implant_stl(
    mask: SkullImage, path: str | Path, smooth: bool = True, coordinate_system: str = "LPS"
) -> vtkPolyData:
    """Write the implant surface as binary STL (atomic) and return the polydata."""
    surface = implant_surface(mask, smooth=smooth, coordinate_system=coordinate_system)
    with atomic_path(path, suffix=".stl") as tmp:
        writer = vtkSTLWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(surface)
        writer.SetFileTypeToBinary()
        writer.SetHeader(f"SkullVAE implant SPACE={coordinate_system} units=mm")
        if writer.Write() != 1:
            raise SkullVAEError("cannot write the STL file", path)
    return surface
