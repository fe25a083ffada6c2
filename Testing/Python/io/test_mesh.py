"""io.mesh: a skull given as a closed surface (STL, OBJ, PLY) is voxelized and completed; what is no skull's
surface is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from vtkmodules.vtkCommonDataModel import vtkPlane
from vtkmodules.vtkFiltersCore import vtkClipPolyData
from vtkmodules.vtkIOGeometry import vtkOBJWriter, vtkSTLWriter
from vtkmodules.vtkIOPLY import vtkPLYWriter

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import SkullImage
from SkullVAELib.io.mesh import read_mesh_skull
from SkullVAELib.io.segfile import read_segmentation
from SkullVAELib.io.skull_input import SkullReading
from SkullVAELib.io.surface import implant_surface, write_implant_stl


@pytest.fixture(scope="module")
def phantom_defect():
    """(a phantom skull with a cranial defect on an oblique grid of 2.4 mm voxels, its true implant mask)."""
    defective, implant = cranial_defect(make_phantom(2, (80, 80, 64), (2.4, 2.4, 2.4)), 0, style="skullbreak")
    turn = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    place = dict(origin=np.array([-90.0, 30.0, 12.0]), spacing=defective.spacing, direction=turn)
    return SkullImage(defective.mask, **place), SkullImage(implant.mask, **place)


def _stl(skull: SkullImage, path, frame: str = "LPS"):
    """``skull``'s bone surface written to ``path`` as STL in ``frame`` (its header says which); ``path``."""
    write_implant_stl(skull, path, smooth=False, coordinate_system=frame)
    return path


def _back_on(grid: SkullImage, read: SkullImage) -> np.ndarray:
    """``read``'s mask taken (nearest voxel centre) onto ``grid``'s voxels."""
    index = np.argwhere(np.ones(grid.shape, dtype=bool))
    points = index @ grid.index_to_physical()[:3, :3].T + grid.origin
    there = np.round(np.linalg.solve(read.index_to_physical()[:3, :3], (points - read.origin).T).T).astype(int)
    inside = np.all((there >= 0) & (there < read.shape), axis=1)
    values = np.zeros(len(index), dtype=bool)
    values[inside] = read.mask[tuple(there[inside].T)]
    return values.reshape(grid.shape)


def test_a_surface_is_the_bone_it_encloses_in_either_frame(tmp_path, phantom_defect):
    """The phantom's bone surface written as STL (LPS, or RAS saying so in its header) and as OBJ reads back as
    the same bone where it lay (oblique grid), on a grid of the voxel asked for, with a note that says so."""
    skull, _ = phantom_defect
    for frame in ("LPS", "RAS"):
        path = _stl(skull, tmp_path / f"skull_{frame}.stl", frame)
        read = read_mesh_skull(path, voxel_mm=1.2)
        assert np.allclose(read.spacing, 1.2) and np.allclose(read.direction, np.eye(3))
        assert dice(_back_on(skull, read), skull.mask) >= 0.93, frame
        assert "voxelized at 1.2 mm in " + frame + " (its header's)" in read.metadata["warnings"][0]
    writer = vtkOBJWriter()
    writer.SetFileName(str(tmp_path / "skull.obj"))
    writer.SetInputData(implant_surface(skull, smooth=False))
    writer.Write()
    read = read_mesh_skull(tmp_path / "skull.obj", voxel_mm=1.2, frame="LPS")
    assert dice(_back_on(skull, read), skull.mask) >= 0.93 and "(--stl-frame's)" in read.metadata["warnings"][0]
    wrong = read_mesh_skull(tmp_path / "skull.obj", voxel_mm=1.2, frame="RAS")  # no header: the frame asked for
    assert dice(_back_on(skull, wrong), skull.mask) < 0.2
    ras = vtkPLYWriter()  # Slicer writes the frame into an OBJ's or a PLY's comments
    ras.SetFileName(str(tmp_path / "skull.ply"))
    ras.AddComment("SPACE=RAS")
    ras.SetInputData(implant_surface(skull, smooth=False, coordinate_system="RAS"))
    ras.Write()
    read = read_mesh_skull(tmp_path / "skull.ply", voxel_mm=1.2)
    assert dice(_back_on(skull, read), skull.mask) >= 0.93 and "in RAS (its header's)" in read.metadata["warnings"][0]


def test_complete_takes_a_surface_and_writes_the_implant_where_it_lay(tmp_path, phantom_defect):
    skull, truth = phantom_defect
    path = _stl(skull, tmp_path / "skull.stl")
    out, stl = tmp_path / "done.seg.nrrd", tmp_path / "implant.stl"
    argv = ["complete", "--input", str(path), "--output", str(out), "--implant-stl", str(stl), "--progress", "none"]
    assert main([*argv, "--mesh-voxel-mm", "1.2", "--no-mirror"]) == 0 and stl.is_file()
    geometry, masks = read_segmentation(out)
    implant = SkullImage(masks["Implant"], geometry.origin, geometry.spacing, geometry.direction)
    assert dice(_back_on(truth, implant), truth.mask) >= 0.8  # voxelized at 1.2 mm, scored on the 2.4 mm truth
    assert SkullReading(mesh_voxel_mm=1.2).information(path).GetSize() == geometry.shape


def test_what_is_no_skulls_closed_surface_is_refused(tmp_path, phantom_defect):
    skull, _ = phantom_defect
    plane = vtkPlane()
    plane.SetOrigin(*(skull.index_to_physical() @ [40, 40, 32, 1])[:3])
    plane.SetNormal(0.0, 0.0, 1.0)
    half = vtkClipPolyData()  # the skull's surface cut through: open along the cut
    half.SetInputData(implant_surface(skull, smooth=False))
    half.SetClipFunction(plane)
    writer = vtkSTLWriter()
    writer.SetFileName(str(tmp_path / "open.stl"))
    writer.SetInputConnection(half.GetOutputPort())
    writer.Write()
    with pytest.raises(SkullVAEError, match=r"open.stl: the surface is open \(\d+ boundary edges\)"):
        read_mesh_skull(tmp_path / "open.stl")
    metres = SkullImage(skull.mask, skull.origin / 1000, skull.spacing / 1000, skull.direction)
    with pytest.raises(SkullVAEError, match="is it in millimetres"):
        read_mesh_skull(_stl(metres, tmp_path / "metres.stl"))
    (tmp_path / "broken.stl").write_bytes(b"\0" * 80 + b"\xff\xff\x00\x00")  # 65535 triangles announced, none
    with pytest.raises(SkullVAEError, match=r"broken.stl: no triangles read from this surface file \(broken"):
        read_mesh_skull(tmp_path / "broken.stl")
    (tmp_path / "empty.stl").write_bytes(b"solid empty\nendsolid empty\n")
    with pytest.raises(SkullVAEError, match="no triangles read"):
        read_mesh_skull(tmp_path / "empty.stl")
    with pytest.raises(SkullVAEError, match="a voxel of 0.01 mm"):
        read_mesh_skull(_stl(skull, tmp_path / "fine.stl"), voxel_mm=0.01)
    assert main(["complete", "--input", str(tmp_path / "open.stl"), "--output", str(tmp_path / "x.seg.nrrd")]) == 2
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_a_folder_of_surfaces_is_a_batch_of_them(tmp_path, phantom_defect):
    from SkullVAELib.workflows.complete_batch import case_stem, folder_inputs

    skull, _ = phantom_defect
    for name in ("Patient 2.stl", "Patient 1.STL"):
        _stl(skull, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an input")
    (tmp_path / "._Patient 1.stl").write_bytes(b"\0" * 84)  # macOS's resource fork: hidden, no case
    found = folder_inputs(tmp_path)
    assert [p.name for p in found] == ["Patient 1.STL", "Patient 2.stl"]
    assert [case_stem(p) for p in found] == ["Patient 1", "Patient 2"]
