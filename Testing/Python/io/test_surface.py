"""The implant STL: physical coordinates (oblique geometry), closed surface, atomic write."""

from __future__ import annotations

import numpy as np
import pytest
import vtk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage
from SkullVAELib.io.surface import write_implant_stl


def _oblique_box() -> SkullImage:
    mask = np.zeros((20, 16, 12), dtype=bool)
    mask[4:15, 3:12, 2:10] = True
    mask[0:3, 0:16, 0:4] = True  # touches the volume border: still closed
    angle = np.deg2rad(30)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return SkullImage(mask, origin=(10.0, -20.0, 5.0), spacing=(0.5, 0.8, 1.5), direction=direction)


def _physical_corners(image: SkullImage) -> np.ndarray:
    """The 8 corners of every bone voxel (voxel = box of ±½ index around its centre), in mm."""
    idx = np.argwhere(image.mask).astype(float)
    offsets = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    corners = (idx[:, None, :] + offsets[None]).reshape(-1, 3)
    homogeneous = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
    return (image.index_to_physical() @ homogeneous.T).T[:, :3]


def _read_stl(path) -> vtk.vtkPolyData:
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_stl_bounds_match_the_physical_box(tmp_path, system):
    image = _oblique_box()
    path = tmp_path / "implant.stl"
    write_implant_stl(image, path, smooth=False, coordinate_system=system)
    poly = _read_stl(path)
    assert poly.GetNumberOfCells() > 0
    corners = _physical_corners(image)
    if system == "RAS":
        corners[:, :2] *= -1
    b = np.array(poly.GetBounds()).reshape(3, 2)
    # the surface runs on the voxel faces (corners cut at most by one voxel)
    tol = 0.5 * float(image.spacing.max())
    np.testing.assert_allclose(b[:, 0], corners.min(0), atol=tol)
    np.testing.assert_allclose(b[:, 1], corners.max(0), atol=tol)


def test_stl_surface_is_closed(tmp_path):
    path = tmp_path / "implant.stl"
    write_implant_stl(_oblique_box(), path, smooth=True)
    poly = _read_stl(path)
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(poly)
    edges = vtk.vtkFeatureEdges()
    edges.SetInputConnection(clean.GetOutputPort())
    edges.BoundaryEdgesOn()
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.NonManifoldEdgesOff()
    edges.Update()
    assert edges.GetOutput().GetNumberOfCells() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["implant.stl"]  # no temporary left over


def test_empty_implant_is_an_error_and_writes_nothing(tmp_path):
    image = _oblique_box().with_mask(np.zeros((20, 16, 12), dtype=bool))
    with pytest.raises(SkullVAEError):
        write_implant_stl(image, tmp_path / "x.stl")
    assert list(tmp_path.iterdir()) == []
