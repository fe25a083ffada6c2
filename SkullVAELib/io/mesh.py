"""A skull given as a surface (STL, OBJ, PLY: what a 3D-printing lab or a planning tool exports), read as a mask.

A surface has no voxel grid; the completion needs one. The surface is voxelized by VTK's polygon-to-stencil filter
(a voxel is bone where its centre lies inside the closed surface: between a skull's outer and inner surfaces) onto
a grid of ``core.config.MESH_VOXEL_MM`` (SkullFix's scans are 0.4-0.5 mm) in the surface's own millimetres, with
``core.config.MISSING_CAP_MM`` of room around the bone for the part a defect removed. The outputs lie on that
grid, and an implant STL (``--implant-stl``) in the surface's coordinates, where it overlays the input.

Coordinates: a surface file carries no frame of its own. Slicer writes ``SPACE=LPS`` or ``SPACE=RAS`` in an STL's
header and in an OBJ's or a PLY's comments, and SkullVAE in an STL's; that word is read, else the frame asked for
(``--stl-frame``, LPS by default, as Slicer reads an STL). A surface in RAS is turned to LPS (x and y negated)
before it is voxelized.

Refused in one line: a file VTK reads no triangles from; one no skull's size in millimetres (in metres or inches);
an open surface (its boundary edges would let the voxelizer's scan lines fill the air); a grid over the memory
limits (checked before it is allocated).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkObject
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import vtkFeatureEdges
from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter
from vtkmodules.vtkImagingStencil import vtkImageStencilToImage, vtkPolyDataToImageStencil
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader
from vtkmodules.vtkIOPLY import vtkPLYReader

from SkullVAELib.core.config import MESH_VOXEL_MM, MISSING_CAP_MM
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_volume
from SkullVAELib.io.grid_header import GridHeader
from SkullVAELib.io.image import SkullImage

SKULL_SPAN_MM = (50.0, 600.0)  # the longest side of a skull's box: a child's to a head on its neck, with room
_READERS = {".stl": vtkSTLReader, ".obj": vtkOBJReader, ".ply": vtkPLYReader}  # MESH_EXTENSIONS' readers
_SPACE = re.compile(rb"SPACE=(LPS|RAS)", re.IGNORECASE)
_HEADER_BYTES = 1024  # where Slicer writes SPACE= (an STL's header, an OBJ's or a PLY's comments)


def mesh_information(path: str | os.PathLike, voxel_mm: float = MESH_VOXEL_MM, frame: str = "LPS") -> GridHeader:
    """The grid the surface at ``path`` is voxelized onto (:func:`read_mesh_skull`), checked against the memory
    limits; the surface is read, no voxel is made."""
    surface, _, _, bounds = _checked_surface(path, frame)
    return _grid(bounds, voxel_mm, path)


def read_mesh_skull(path: str | os.PathLike, voxel_mm: float = MESH_VOXEL_MM, frame: str = "LPS") -> SkullImage:
    """The skull inside the closed surface at ``path`` as a mask on a grid of ``voxel_mm`` (identity direction, in
    the surface's millimetres turned to LPS; ``frame``: the surface's coordinates where its header names none).

    Raises SkullVAEError naming the file: unreadable or empty, open (boundary edges), a grid over the limits."""
    surface, used, said, bounds = _checked_surface(path, frame)
    _checked_surface_of.cache_clear()  # read now: the surface is not kept beside the mask
    header = _grid(bounds, voxel_mm, path)
    stencil = vtkPolyDataToImageStencil()
    stencil.SetInputData(surface)
    stencil.SetOutputOrigin(header.origin)
    stencil.SetOutputSpacing(header.spacing)
    stencil.SetOutputWholeExtent(0, header.size[0] - 1, 0, header.size[1] - 1, 0, header.size[2] - 1)
    image = vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.SetOutputScalarTypeToUnsignedChar()
    image.Update()
    voxels = numpy_support.vtk_to_numpy(image.GetOutput().GetPointData().GetScalars())
    mask = voxels.reshape(header.size[::-1]).transpose(2, 1, 0).astype(bool)  # VTK: x fastest
    if not mask.any():
        raise SkullVAEError("the surface holds no voxel's centre; is it a skull in millimetres?", path)
    how = "its header's" if said else "--stl-frame's"
    note = f"{Path(path).name}: a surface, voxelized at {voxel_mm:g} mm in {used} ({how}); the outputs lie on that grid"
    metadata = {"source": str(path), "kind": "mesh", "warnings": [note]}
    return SkullImage(mask, np.array(header.origin), np.array(header.spacing), np.eye(3), metadata)


def _checked_surface(path: str | os.PathLike, frame: str):
    """(the surface of ``path`` in LPS, the frame it was read in, whether its header named it, its (2, 3) bounds),
    checked (:func:`_checked_bounds`). The last one asked for is kept: a completion checks its input, then reads
    it (a 2.3 million-triangle skull takes 1.1 s to read and check)."""
    path = Path(path)
    if not path.is_file():
        raise SkullVAEError("file not found", path)
    stat = path.stat()
    return _checked_surface_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns, frame)


@functools.lru_cache(maxsize=1)
def _checked_surface_of(name: str, _size: int, _mtime_ns: int, frame: str):
    """:func:`_checked_surface` of the file ``name`` as it is at (size, mtime): its cache key."""
    surface, used, said = _lps_surface(Path(name), frame)
    return surface, used, said, _checked_bounds(surface, name)


def _lps_surface(path: Path, frame: str):
    """(the surface of ``path`` in LPS, the frame it was read in, whether its header named it)."""
    surface = _read_surface(path)
    with path.open("rb") as stream:  # an STL's 80-byte header, an OBJ's first comments, a PLY's header
        found = _SPACE.search(stream.read(_HEADER_BYTES))
    used = found.group(1).decode().upper() if found else frame
    if used == "LPS":
        return surface, used, found is not None
    turn = vtkTransform()
    turn.Scale(-1.0, -1.0, 1.0)  # RAS → LPS
    to_lps = vtkTransformPolyDataFilter()
    to_lps.SetTransform(turn)
    to_lps.SetInputData(surface)
    to_lps.Update()
    return to_lps.GetOutput(), used, found is not None


def _read_surface(path: Path):
    """The polygons of the surface file ``path``; SkullVAEError naming it where VTK reads none (a broken or empty
    file: its reader's error report is kept off the terminal, the one line says it)."""
    reader = _READERS[path.suffix.lower()]()
    shown = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        reader.SetFileName(str(path))
        reader.Update()
    finally:
        vtkObject.SetGlobalWarningDisplay(shown)
    surface = reader.GetOutput()
    if surface.GetNumberOfPolys() == 0:
        raise SkullVAEError("no triangles read from this surface file (broken or empty?)", path)
    return surface


def _checked_bounds(surface, path) -> np.ndarray:
    """(2, 3) low and high corners (mm) of ``surface``; SkullVAEError naming ``path`` for points that are not
    finite, a size no skull has in millimetres (:data:`SKULL_SPAN_MM`), an open surface."""
    bounds = np.array(surface.GetBounds(), dtype=np.float64).reshape(3, 2).T
    if not np.all(np.isfinite(bounds)):
        raise SkullVAEError("the surface's points are not finite", path)
    span = float((bounds[1] - bounds[0]).max())
    low, high = SKULL_SPAN_MM
    if not low <= span <= high:
        raise SkullVAEError(
            f"the surface spans {span:g} units; a skull spans {low:g}-{high:g} mm: is it in millimetres?", path
        )
    edges = vtkFeatureEdges()
    edges.SetInputData(surface)
    edges.BoundaryEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.NonManifoldEdgesOff()
    edges.Update()
    open_edges = int(edges.GetOutput().GetNumberOfCells())
    if open_edges:
        raise SkullVAEError(
            f"the surface is open ({open_edges} boundary edges): bone is what a closed surface holds; close its "
            "holes first (e.g. Slicer's Surface Toolbox, Fill holes)",
            path,
        )
    return bounds


def _grid(bounds: np.ndarray, voxel_mm: float, path) -> GridHeader:
    """The grid of ``voxel_mm`` covering ``bounds`` (2, 3) and ``core.config.MISSING_CAP_MM`` about them, checked
    against the memory limits before anything is allocated."""
    if not (np.isfinite(voxel_mm) and 0.05 <= voxel_mm <= 5.0):
        raise SkullVAEError(f"a voxel of {voxel_mm:g} mm; choose 0.05-5 mm for a skull's surface", path)
    low = bounds[0] - MISSING_CAP_MM
    size = tuple(int(n) for n in np.ceil((bounds[1] + MISSING_CAP_MM - low) / voxel_mm).astype(int) + 1)
    check_volume(size, 1, path, what="voxelized surface")
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return GridHeader(size, (float(voxel_mm),) * 3, tuple(float(v) for v in low), identity, sitk.sitkUInt8)
