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


# --- orientation: every facet faces away from the material, on the walls of an enclosed void too ---
def _hollow_cube(mirror: bool) -> SkullImage:
    """A 20³ grid: a 16³ cube of material around an enclosed 6³ void; anisotropic, oblique (mirrored
    when ``mirror``: det(direction) = -1)."""
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:18, 2:18, 2:18] = True
    mask[7:13, 7:13, 7:13] = False
    direction = _oblique_box().direction @ np.diag([1.0, 1.0, -1.0 if mirror else 1.0])
    return SkullImage(mask, origin=(10.0, -20.0, 5.0), spacing=(0.5, 0.8, 1.5), direction=direction)


def _stl_facets(path) -> tuple[np.ndarray, np.ndarray]:
    """(stored facet normals (N, 3), vertices (N, 3, 3) in mm) of a binary STL, read byte for byte."""
    data = path.read_bytes()
    count = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
    facet = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attribute", "<u2")])
    facets = np.frombuffer(data, dtype=facet, count=count, offset=84)
    return facets["normal"].astype(np.float64), facets["vertices"].astype(np.float64)


def _to_index(image: SkullImage, system: str, points_mm: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (..., 3) of points (..., 3) given in the STL's frame (LPS or RAS mm)."""
    affine = image.index_to_physical()
    if system == "RAS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return (points_mm - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def _signed_volume(vertices: np.ndarray) -> float:
    """Volume (mm³) enclosed by triangles (N, 3, 3): positive when they face outwards."""
    return float(np.einsum("ij,ij->i", vertices[:, 0], np.cross(vertices[:, 1], vertices[:, 2])).sum() / 6.0)


@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_stl_facets_face_out_of_the_material_around_an_enclosed_void(tmp_path, system, mirror):
    from scipy.ndimage import map_coordinates

    image = _hollow_cube(mirror)
    path = tmp_path / "implant.stl"
    write_implant_stl(image, path, smooth=False, coordinate_system=system)
    stored, vertices = _stl_facets(path)
    wound = np.cross(vertices[:, 1] - vertices[:, 0], vertices[:, 2] - vertices[:, 0])  # right-hand rule
    assert np.all(np.einsum("ij,ij->i", wound, stored) > 0)  # stored normals agree with the winding
    unit = wound / np.linalg.norm(wound, axis=1, keepdims=True)
    centre = vertices.mean(axis=1)
    step = 0.1 * float(image.spacing.min())  # mm
    # material density (trilinear in the mask) is lower just in front of each facet than just behind it
    density = image.mask.astype(np.float64)
    ahead, behind = (
        map_coordinates(density, _to_index(image, system, centre + s * step * unit).T, order=1, mode="constant")
        for s in (1.0, -1.0)
    )
    assert np.all(ahead < behind), f"{np.count_nonzero(ahead >= behind)} of {len(unit)} facets face into material"
    centre_index = _to_index(image, system, centre)
    void_wall = np.all((centre_index > 5.0) & (centre_index < 14.0), axis=1)
    assert void_wall.any() and not void_wall.all()
    assert _signed_volume(vertices[void_wall]) < 0  # the void's wall faces into the void


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("mirror", [False, True])
def test_stl_signed_volume_is_the_material_volume_of_a_hollow_implant(tmp_path, mirror, smooth):
    image = _hollow_cube(mirror)
    path = tmp_path / "implant.stl"
    write_implant_stl(image, path, smooth=smooth)
    _, vertices = _stl_facets(path)
    material = np.count_nonzero(image.mask) * image.voxel_volume_mm3  # the void is not material
    # the surface cuts the voxel corners: a little under the voxel count, never the void added on top
    assert _signed_volume(vertices) == pytest.approx(material, rel=0.02)
    mass = vtk.vtkMassProperties()
    mass.SetInputData(_read_stl(path))
    mass.Update()
    assert mass.GetVolume() == pytest.approx(material, rel=0.02)
