"""The implant's surface as a binary STL in physical millimetres, ready for printing.

Coordinate frame: 3D Slicer (≥ 4.11) reads STL/OBJ models as LPS unless the file says
otherwise, so the default ``coordinate_system="LPS"`` writes ITK physical space and the
model overlays the volume when both are loaded in Slicer. ``"RAS"`` negates x and y.
The full index→physical affine (origin, spacing and an oblique direction) is applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

from SkullVAELib.atomic import atomic_path
from SkullVAELib.errors import SkullVAEError
from SkullVAELib.image import SkullImage

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _vtk_image(mask: np.ndarray) -> vtk.vtkImageData:
    """A uint8 vtkImageData in index space (origin 0, spacing 1), padded by one empty voxel.

    The padding closes the surface where the mask touches the volume border; the padded
    image starts at index −1.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    image = vtk.vtkImageData()
    image.SetDimensions(*padded.shape)
    image.SetOrigin(-1.0, -1.0, -1.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    # VTK point order is x fastest: (K, J, I) C-order == (I, J, K) Fortran order
    scalars = numpy_support.numpy_to_vtk(padded.ravel(order="F"), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def implant_surface(mask: SkullImage, smooth: bool = True, coordinate_system: str = "LPS") -> vtk.vtkPolyData:
    """Triangulated surface (with normals) of ``mask.mask`` in physical mm.

    Args:
        mask: a binary SkullImage (I, J, K) and its geometry.
        smooth: windowed-sinc smoothing (20 iterations, pass band 0.1) of the staircase.
        coordinate_system: "LPS" (ITK, Slicer's STL default) or "RAS".
    """
    if coordinate_system not in ("LPS", "RAS"):
        raise SkullVAEError(f"coordinate_system must be LPS or RAS, got {coordinate_system!r}")
    if not mask.mask.any():
        raise SkullVAEError("the implant is empty; there is no surface to write")
    contour = vtk.vtkDiscreteFlyingEdges3D()
    contour.SetInputData(_vtk_image(mask.mask))
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    last = contour
    if smooth:
        smoother = vtk.vtkWindowedSincPolyDataFilter()
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
    transform = vtk.vtkTransform()
    transform.SetMatrix(affine.ravel().tolist())
    to_physical = vtk.vtkTransformPolyDataFilter()
    to_physical.SetTransform(transform)
    to_physical.SetInputConnection(last.GetOutputPort())
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(to_physical.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()  # outward normals, even for a mirroring (det < 0) affine
    normals.Update()
    return normals.GetOutput()


def write_implant_stl(
    mask: SkullImage, path: str | Path, smooth: bool = True, coordinate_system: str = "LPS"
) -> vtk.vtkPolyData:
    """Write the implant surface as binary STL (atomic) and return the polydata."""
    surface = implant_surface(mask, smooth=smooth, coordinate_system=coordinate_system)
    with atomic_path(path, suffix=".stl") as tmp:
        writer = vtk.vtkSTLWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputData(surface)
        writer.SetFileTypeToBinary()
        writer.SetHeader(f"SkullVAE implant SPACE={coordinate_system} units=mm")
        if writer.Write() != 1:
            raise SkullVAEError("cannot write the STL file", path)
    return surface
