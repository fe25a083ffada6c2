"""`.seg.nrrd` files: names, colours, overlap and exact geometry, read back by slicerio and by Slicer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import slicerio
from conftest import finishes

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage, read_skull, write_mask
from SkullVAELib.io.segfile import DEFAULT_COLORS, Segment, read_segmentation, write_segmentation


def _rotation(angle_deg: float, axis: int) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return rot


@pytest.fixture
def skull_and_implant(tmp_path) -> tuple[SkullImage, np.ndarray, np.ndarray]:
    """An oblique shell; the implant is a cap of it; the completed skull contains the implant."""
    shape = (40, 36, 28)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    complete = (r > 0.55) & (r < 0.8)
    implant = complete & (grid[2] > 0.5)
    direction = _rotation(17.3, 0) @ _rotation(-8.9, 2)
    like = SkullImage(
        complete, origin=(-120.2, -127.846117, -10.2158), spacing=(0.451172, 0.4511719, 0.633), direction=direction
    )
    # as read from a NRRD file (NRRD stores spacing·direction, so arbitrary doubles shift an ulp once)
    write_mask(like, tmp_path / "like.nrrd")
    like = read_skull(tmp_path / "like.nrrd")
    (tmp_path / "like.nrrd").unlink()
    return like, complete, implant


def _segments(complete, implant) -> list[Segment]:
    return [
        Segment("Completed skull", complete),
        Segment("Implant", implant),
        Segment("Defective skull", complete & ~implant),
    ]


def test_round_trip_names_masks_geometry(tmp_path, skull_and_implant):
    like, complete, implant = skull_and_implant
    path = tmp_path / "out.seg.nrrd"
    write_segmentation(path, like, _segments(complete, implant))
    geometry, masks = read_segmentation(path)
    assert geometry.same_geometry(like)
    assert list(masks) == ["Completed skull", "Implant", "Defective skull"]
    assert np.array_equal(masks["Completed skull"], complete)
    assert np.array_equal(masks["Implant"], implant)
    assert np.array_equal(masks["Defective skull"], complete & ~implant)
    assert [p.name for p in tmp_path.iterdir()] == ["out.seg.nrrd"]  # no temporary left


def test_slicerio_sees_names_colors_layers(tmp_path, skull_and_implant):
    like, complete, implant = skull_and_implant
    path = tmp_path / "out.seg.nrrd"
    write_segmentation(path, like, [Segment("Completed skull", complete), Segment("Implant", implant, (0.1, 0.2, 0.3))])
    seg = slicerio.read_segmentation(str(path))
    by_name = {s["name"]: s for s in seg["segments"]}
    np.testing.assert_allclose(by_name["Completed skull"]["color"], DEFAULT_COLORS["Completed skull"])
    np.testing.assert_allclose(by_name["Implant"]["color"], (0.1, 0.2, 0.3))
    assert by_name["Completed skull"]["layer"] != by_name["Implant"]["layer"]  # overlapping → two layers
    np.testing.assert_allclose(np.asarray(seg["ijkToLPS"]), like.index_to_physical(), rtol=0, atol=1e-12)
    extracted = slicerio.extract_segments(seg, [("Implant", 1)])
    assert np.array_equal(extracted["voxels"] == 1, implant)


def test_disjoint_segments_use_one_3d_layer(tmp_path, skull_and_implant):
    like, complete, implant = skull_and_implant
    write_segmentation(
        tmp_path / "d.seg.nrrd", like, [Segment("Defective skull", complete & ~implant), Segment("Implant", implant)]
    )
    seg = slicerio.read_segmentation(str(tmp_path / "d.seg.nrrd"))
    assert np.asarray(seg["voxels"]).ndim == 3
    assert {s["layer"] for s in seg["segments"]} == {0}


@pytest.mark.parametrize("overlap", [False, True], ids=["3D, by ITK", "layered 4D, by pynrrd"])
def test_slicer_fields_are_the_ones_slicerio_writes(tmp_path, skull_and_implant, overlap):
    """Both writers give the header fields slicerio (Slicer's own format) gives the same segments,
    the same geometry and kinds, so a file reads the same whichever way it was written."""
    import nrrd

    like, complete, implant = skull_and_implant
    first = complete if overlap else complete & ~implant
    segments = [Segment("Completed skull" if overlap else "Defective skull", first), Segment("Implant", implant)]
    ours = tmp_path / "ours.seg.nrrd"
    write_segmentation(ours, like, segments)
    theirs = tmp_path / "theirs.seg.nrrd"
    seg = slicerio.read_segmentation(str(ours))
    slicerio.write_segmentation(str(theirs), seg)
    a, b = nrrd.read_header(str(ours)), nrrd.read_header(str(theirs))
    custom = [k for k in b if k.startswith("Segment")]
    assert len(custom) >= 3 + 9 * len(segments)
    assert {k: a.get(k) for k in custom} == {k: b[k] for k in custom}
    assert a["kinds"] == b["kinds"] == (["list", "domain", "domain", "domain"] if overlap else ["domain"] * 3)
    assert a["space"] == "left-posterior-superior" and a["encoding"] == "gzip"
    np.testing.assert_array_equal(a["space origin"], b["space origin"])
    np.testing.assert_array_equal(a["space directions"], b["space directions"])  # nan row of a layered file too


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_slicer_storage_node_reads_names_colors_geometry(tmp_path, skull_and_implant):
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    like, complete, implant = skull_and_implant
    write_segmentation(tmp_path / "out.seg.nrrd", like, _segments(complete, implant))
    write_mask(like, tmp_path / "volume.nrrd")

    scene = slicer.vtkMRMLScene()
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg_storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(seg_storage)
    seg_storage.SetFileName(str(tmp_path / "out.seg.nrrd"))
    assert seg_storage.ReadData(seg_node)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    volume_storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(volume_storage)
    volume_storage.SetFileName(str(tmp_path / "volume.nrrd"))
    assert volume_storage.ReadData(volume)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ like.index_to_physical()  # LPS → RAS
    np.testing.assert_allclose(_matrix(ijk_to_ras), expected, rtol=0, atol=1e-9)

    segmentation = seg_node.GetSegmentation()
    wanted = {"Completed skull": complete, "Implant": implant, "Defective skull": complete & ~implant}
    assert segmentation.GetNumberOfSegments() == 3
    for n in range(3):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(n))
        name = segment.GetName()
        assert name in wanted
        np.testing.assert_allclose(segment.GetColor(), DEFAULT_COLORS[name], atol=1e-6)
        labelmap = segment.GetRepresentation("Binary labelmap")
        image_to_world = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(image_to_world)
        np.testing.assert_allclose(_matrix(image_to_world), _matrix(ijk_to_ras), rtol=0, atol=1e-9)
        assert labelmap.GetExtent() == (0, like.shape[0] - 1, 0, like.shape[1] - 1, 0, like.shape[2] - 1)
        voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(like.shape[::-1]).transpose(2, 1, 0)
        assert np.array_equal(voxels == segment.GetLabelValue(), wanted[name])


@pytest.mark.skullfix
def test_skullfix_oblique_case(skullfix_dir, tmp_path):
    skull = read_skull(skullfix_dir / "complete_skull" / "000.nrrd")  # oblique direction
    implant = read_skull(skullfix_dir / "implant" / "000.nrrd").mask
    write_segmentation(
        tmp_path / "000.seg.nrrd",
        skull,
        [Segment("Completed skull", skull.mask | implant), Segment("Implant", implant)],
    )
    geometry, masks = read_segmentation(tmp_path / "000.seg.nrrd")
    assert geometry.same_geometry(skull)
    assert np.array_equal(masks["Implant"], implant)
    assert np.array_equal(masks["Completed skull"], skull.mask | implant)


def test_bad_input(tmp_path, skull_and_implant):
    like, complete, implant = skull_and_implant
    with pytest.raises(SkullVAEError, match="not found") as err:
        read_segmentation(tmp_path / "missing.seg.nrrd")
    assert "missing.seg.nrrd" in str(err.value)
    garbage = tmp_path / "garbage.seg.nrrd"
    garbage.write_text("hello")
    with pytest.raises(SkullVAEError, match="cannot read") as err:
        read_segmentation(garbage)
    assert "garbage.seg.nrrd" in str(err.value)
    with pytest.raises(SkullVAEError, match="shape"):
        write_segmentation(tmp_path / "x.seg.nrrd", like, [Segment("Implant", implant[:-1])])
    with pytest.raises(SkullVAEError, match="unique"):
        write_segmentation(tmp_path / "x.seg.nrrd", like, [Segment("Implant", implant), Segment("Implant", complete)])
    assert not (tmp_path / "x.seg.nrrd").exists()


@pytest.mark.parametrize("level", [1, 2, 3, 9])
def test_every_compression_level_reads_back_the_same_masks(tmp_path, skull_and_implant, level):
    """The writer's gzip level changes only the file's size (docs/BENCHMARKS.md §2c picked the default)."""
    import nrrd

    like, complete, implant = skull_and_implant
    path = tmp_path / f"l{level}.seg.nrrd"
    write_segmentation(path, like, _segments(complete, implant), compression_level=level)
    assert nrrd.read_header(str(path))["encoding"] == "gzip"
    geometry, masks = read_segmentation(path)
    assert geometry.same_geometry(like)
    assert np.array_equal(masks["Implant"], implant) and np.array_equal(masks["Completed skull"], complete)
    if level == 9:
        write_segmentation(tmp_path / "l1.seg.nrrd", like, _segments(complete, implant), compression_level=1)
        assert path.stat().st_size < (tmp_path / "l1.seg.nrrd").stat().st_size


@pytest.mark.parametrize("level", [-1, 0, 10, 3.0, "3"])
def test_a_bad_compression_level_writes_nothing(tmp_path, skull_and_implant, level):
    like, complete, implant = skull_and_implant
    with pytest.raises(SkullVAEError, match="compression level") as err:
        write_segmentation(tmp_path / "x.seg.nrrd", like, _segments(complete, implant), compression_level=level)
    assert "x.seg.nrrd" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_layers_go_to_the_first_layer_they_do_not_overlap_and_leave_the_masks_alone():
    from SkullVAELib.io.segfile import _assign_layers

    a = np.zeros((6, 6, 6), dtype=bool)
    b, c, d = a.copy(), a.copy(), a.copy()
    a[:2], b[4:], c[1:3], d[3] = True, True, True, True  # c overlaps a; d overlaps neither a, b nor c
    before = [m.copy() for m in (a, b, c, d)]
    assert _assign_layers([a, b, c, d]) == [0, 0, 1, 0]
    assert _assign_layers([a, b]) == [0, 0]
    assert _assign_layers([a, c, b]) == [0, 1, 0]
    for mask, copy in zip((a, b, c, d), before, strict=True):
        np.testing.assert_array_equal(mask, copy)


# --- a bad .seg.nrrd is refused as the image reader refuses a bad image: one line naming the file ---
_SEGMENT_FIELDS = "Segment0_ID:=Segment_1\nSegment0_Name:=Implant\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n"
_NUMPY_TYPES = {"uint8": "u1", "int64": "<i8", "float": "<f4"}


def _seg_nrrd(path: Path, data: bool = True, **fields: str | None) -> Path:
    """A one-segment .seg.nrrd: raw labels (I, J, K) = 8×9×10, 0.5×0.7×0.9 mm, origin (1, 2, 3) mm.

    ``fields`` replace header fields (``space_origin="(nan,2,3)"``; None drops one); ``data=False``
    writes no voxels (for a detached ``data_file``)."""
    header = {
        "type": "uint8",
        "dimension": "3",
        "space": "left-posterior-superior",
        "sizes": "8 9 10",
        "space directions": "(0.5,0,0) (0,0.7,0) (0,0,0.9)",
        "kinds": "domain domain domain",
        "endian": "little",
        "encoding": "raw",
        "space origin": "(1,2,3)",
    }
    header.update({key.replace("_", " "): value for key, value in fields.items()})
    text = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in header.items() if v is not None) + _SEGMENT_FIELDS
    labels = np.zeros([int(s) for s in header["sizes"].split()][::-1], dtype=_NUMPY_TYPES[header["type"]])
    labels[..., 2:5] = 1  # (K, J, I): x fastest in the file
    path.write_bytes((text + "\n").encode() + (labels.tobytes() if data else b""))
    return path


def _refused(path: Path, named: Path | None = None, seconds: float = 10.0) -> str:
    """The one-line SkullVAEError of ``read_segmentation(path)``, which names ``named`` (default
    ``path``); fails instead of hanging when the read blocks (a FIFO)."""
    with pytest.raises(SkullVAEError) as error:
        finishes(lambda: read_segmentation(path), seconds)
    message = str(error.value)
    assert "\n" not in message and str(named or path) in message, message
    return message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"space_directions": "(nan,0,0) (0,0.7,0) (0,0,0.9)"}, "not finite"),
        ({"space_directions": "(0,0,0) (0,0.7,0) (0,0,0.9)"}, "not finite and positive"),
        ({"space_directions": "(100,0,0) (0,0.7,0) (0,0,0.9)"}, "outside 0.05-20 mm"),
        ({"space_directions": "(0.5,0,0) (0.5,0,0) (0,0,0.9)"}, "singular"),
        ({"space_origin": "(nan,2,3)"}, "not finite"),
        ({"space_origin": "(1e300,2,3)"}, "not a finite position"),
        ({"sizes": "8 9 1"}, "2D image"),
        ({"type": "float"}, "expected integer labels"),
    ],
    ids=["nan-spacing", "zero-spacing", "implausible-spacing", "singular", "nan-origin", "far-origin", "2D", "float"],
)
def test_bad_segmentation_header_is_refused_like_a_bad_image(tmp_path, fields, expected):
    assert expected in _refused(_seg_nrrd(tmp_path / "bad.seg.nrrd", **fields))


@pytest.mark.parametrize(
    ("data_file", "expected"), [("/dev/zero", "not a regular file"), ("fifo", "FIFO"), ("gone", "not found")]
)
def test_segmentation_data_file_that_is_not_a_regular_file_is_refused(tmp_path, data_file, expected):
    if data_file == "fifo":
        os.mkfifo(tmp_path / "fifo")
    path = _seg_nrrd(tmp_path / "detached.seg.nrrd", data=False, data_file=data_file)
    assert expected in _refused(path, named=tmp_path / data_file)


def test_segmentation_memory_estimate_counts_the_bytes_of_its_labels(tmp_path, monkeypatch, default_limits):
    """10⁶ int64 labels: under a 0.02 GB limit at 1 byte a voxel, over it at their 8 bytes."""
    from SkullVAELib.core.limits import ENV_MAX_MEMORY_GB

    monkeypatch.setenv(ENV_MAX_MEMORY_GB, "0.02")
    path = _seg_nrrd(tmp_path / "wide.seg.nrrd", data=False, type="int64", sizes="100 100 100", data_file="gone")
    (tmp_path / "gone").write_bytes(b"")  # a regular file: only the size estimate can refuse it
    assert "memory, over the 0.02 GB limit" in _refused(path)


def test_segmentation_geometry_is_the_checked_header_geometry(tmp_path):
    """The geometry read_skull reads (a NRRD ``spacings`` field too), with the defaults it assumed."""
    bare = {"space": None, "space_directions": None, "space_origin": None}  # no LPS space: origin 0
    path = _seg_nrrd(tmp_path / "spacings.seg.nrrd", spacings="0.5 0.7 0.9", **bare)
    geometry, masks = read_segmentation(path)
    np.testing.assert_array_equal(geometry.spacing, [0.5, 0.7, 0.9])
    skull = read_skull(path)
    assert geometry.same_geometry(skull) and np.array_equal(masks["Implant"], skull.mask)
    assert geometry.metadata["warnings"] == []
    geometry, _ = read_segmentation(_seg_nrrd(tmp_path / "bare.seg.nrrd", **bare))
    assert ["1 mm was assumed" in w for w in geometry.metadata["warnings"]] == [True]
