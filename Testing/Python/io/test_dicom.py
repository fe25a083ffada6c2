"""io.dicom: a folder of one DICOM series read as a CT on its exact geometry (a tilted gantry's on the regular grid of its
slices); what would misplace it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.dicom import is_dicom_folder, keeping_locale, series_information
from SkullVAELib.io.image import SkullImage
from SkullVAELib.io.segfile import read_segmentation
from SkullVAELib.io.skull_input import input_information, read_input_skull
from SkullVAELib.workflows.complete_batch import batch_inputs


def _ct_of(mask_image) -> sitk.Image:
    """An int16 CT (HU) of a SkullImage: air -1000, the head's soft tissue 40 (a ball about the bone), bone 1200."""
    mask = mask_image.mask
    points = np.indices(mask.shape).reshape(3, -1).T * mask_image.spacing
    centre = points[mask.ravel()].mean(axis=0)
    head = np.linalg.norm(points - centre, axis=1) < 0.45 * (np.array(mask.shape) * mask_image.spacing).min()
    hu = np.where(mask, 1200, np.where(head.reshape(mask.shape), 40, -1000)).astype(np.int16)
    image = sitk.GetImageFromArray(hu.transpose(2, 1, 0))
    image.CopyInformation(mask_image.to_sitk())
    return image


def write_series(image: sitk.Image, folder: Path, uid: str = "1.2.826.0.1.3680043.2.1125.7", tilt_deg: float = 0.0,
                 skip: tuple[int, ...] = (), description: str = "Head CT", modality: str = "CT") -> Path:  # fmt: skip
    """Write ``image`` as a DICOM series (one file a slice) into ``folder``; its slices shifted along the rows by
    tan(``tilt_deg``) of their step (a tilted gantry), ``skip``: slices left out."""
    folder.mkdir(parents=True, exist_ok=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.9f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    row = np.array([d[0], d[3], d[6]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with keeping_locale():
        _write_slices(image, folder, writer, uid, orientation, row, tilt_deg, skip, description, modality)
    return folder


def _write_slices(image, folder, writer, uid, orientation, row, tilt_deg, skip, description, modality) -> None:
    """:func:`write_series`'s slices, one file each."""
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        plane = image[:, :, k]
        shift = row * np.tan(np.radians(tilt_deg)) * image.GetSpacing()[2] * k
        position = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + shift
        tags = {
            "0008|0060": modality, "0020|000d": uid + ".1", "0020|000e": uid + ".2", "0008|103e": description,
            "0020|0037": orientation, "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0011": uid.rsplit(".", 1)[-1],
            "0020|0013": str(k + 1), "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0008|0018": f"{uid}.3.{k + 1}",
        }  # fmt: skip
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[-1]}_{k:04d}.dcm"))
        writer.Execute(plane)


@pytest.fixture(scope="module")
def oblique_case():
    """(a phantom with a cranial defect on an oblique grid, its CT image)."""
    defective, _ = cranial_defect(make_phantom(1, (64, 64, 48), (3.2, 3.2, 3.2)), 1, style="skullbreak")
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0.2, -0.1, 0.3)
    direction = np.array(turn.GetMatrix()).reshape(3, 3)
    oblique = SkullImage(defective.mask, np.array([12.5, -40.0, 7.0]), defective.spacing, direction, {})
    return oblique, _ct_of(oblique)


def test_a_series_reads_as_its_ct_on_its_exact_grid(tmp_path, oblique_case):
    """The series' mask and geometry are the CT's (an oblique grid), and reading it leaves the process's text
    encoding as it was (GDCM sets the C locale: Python's default encoding turned ASCII, and a record with "γ" failed)."""
    import locale

    skull, ct = oblique_case
    encoding = locale.getpreferredencoding(False)
    folder = write_series(ct, tmp_path / "Patient 7")
    assert is_dicom_folder(folder) and not is_dicom_folder(tmp_path / "nothing")
    information = series_information(folder)
    assert information.GetSize() == skull.shape and np.allclose(information.GetSpacing(), skull.spacing)
    read = read_input_skull(folder)
    assert read.metadata["kind"] == "ct" and np.array_equal(read.mask, skull.mask)
    assert np.allclose(read.origin, skull.origin, atol=1e-3) and np.allclose(read.direction, skull.direction, atol=1e-6)
    assert locale.getpreferredencoding(False) == encoding


def test_complete_takes_a_series_folder_and_a_folder_of_series(tmp_path, oblique_case, capsys):
    skull, ct = oblique_case
    folder = write_series(ct, tmp_path / "series" / "Patient 7")
    out = tmp_path / "out.seg.nrrd"
    assert main(["complete", "--input", str(folder), "--output", str(out), "--no-mirror", "--progress", "none"]) == 0
    geometry, masks = read_segmentation(out)
    assert np.allclose(geometry.origin, skull.origin, atol=1e-3) and np.allclose(geometry.direction, skull.direction)
    assert np.array_equal(masks["Patient bone"], skull.mask) and masks["Implant"].any()
    write_series(ct, tmp_path / "series" / "Patient 8", uid="1.2.826.0.1.3680043.2.1125.8")
    argv = ["complete", "--input", str(tmp_path / "series"), "--output", str(tmp_path / "batch"), "--jobs", "1"]
    assert main([*argv, "--no-mirror", "--progress", "none"]) == 0
    assert sorted(p.name for p in (tmp_path / "batch").glob("*.seg.nrrd")) == [
        "Patient 7.seg.nrrd",
        "Patient 8.seg.nrrd",
    ]
    study = write_series(ct, tmp_path / "study")
    write_series(ct, study, uid="1.2.826.0.1.3680043.2.1125.9", description="Bone window")
    out = tmp_path / "chosen.seg.nrrd"
    argv = ["complete", "--input", str(study), "--output", str(out), "--no-mirror", "--progress", "none"]
    assert main(argv) == 2 and not out.exists()  # two series, none chosen
    assert main([*argv, "--series", "Bone window"]) == 0 and out.is_file()
    capsys.readouterr()


def _sheared_index(points: np.ndarray, ct: sitk.Image, tilt_deg: float) -> np.ndarray:
    """The (i, j, k) index of LPS ``points`` (N, 3) in the slices :func:`write_series` wrote of ``ct`` with
    ``tilt_deg``: slice k moved along the rows by k × tan(tilt) × the slice distance (nearest voxel)."""
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    spacing = np.array(ct.GetSpacing())
    to_point = direction * spacing
    to_point[:, 2] += direction[:, 0] * np.tan(np.radians(tilt_deg)) * spacing[2]
    return np.round(np.linalg.solve(to_point, (points - np.array(ct.GetOrigin())).T).T).astype(int)


def test_a_tilted_gantrys_series_is_resampled_onto_the_regular_grid_of_its_slices(tmp_path, oblique_case, capsys):
    """A tilted gantry's slices lie on a sheared grid: read onto the regular grid along their normal, every bone
    voxel lies where the scanner measured bone (read as the first slice's grid, as SimpleITK's reader does, a
    quarter would not), the volume is kept, and the result says it was resampled."""
    skull, ct = oblique_case
    folder = write_series(ct, tmp_path / "tilted", tilt_deg=15.0)
    information = series_information(folder)
    read = read_input_skull(folder)
    assert read.shape == information.GetSize() and read.shape[0] > skull.shape[0]  # grown by the shear
    slice_normal = np.cross(skull.direction[:, 0], skull.direction[:, 1])
    assert np.allclose(read.direction, np.stack([*skull.direction[:, :2].T, slice_normal], axis=1), atol=1e-6)
    assert np.allclose(read.spacing, skull.spacing, atol=1e-6)  # the slices' distance along their normal
    affine = read.index_to_physical()
    points = np.argwhere(read.mask) @ affine[:3, :3].T + affine[:3, 3]
    near_bone = ndimage.binary_dilation(skull.mask)  # the regular grid's points fall between the scanner's
    for tilt, least, most in ((15.0, 0.995, 1.0), (0.0, 0.0, 0.8)):  # the scanner's grid; the first slice's
        index = _sheared_index(points, ct, tilt)
        inside = np.all((index >= 0) & (index < skull.shape), axis=1)
        on_bone = inside.copy()
        on_bone[inside] = near_bone[tuple(index[inside].T)]
        assert least <= on_bone.mean() <= most, (tilt, on_bone.mean())
    # interpolated between 3.2 mm voxels (bone 1200, tissue 40 HU), the shell's edge passes 300 HU a little wider
    assert 1.0 <= read.mask.sum() / skull.mask.sum() < 1.06
    assert any("gantry-tilted series (its slices step 15.0°" in w for w in read.metadata["warnings"])
    out = tmp_path / "tilted.seg.nrrd"
    argv = ["complete", "--input", str(folder), "--output", str(out), "--no-mirror", "--progress", "json"]
    assert main(argv) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]
    assert any("resampled onto a regular grid" in w for w in done["warnings"])
    geometry, masks = read_segmentation(out)
    assert geometry.shape == read.shape and np.allclose(geometry.origin, read.origin, atol=1e-3)
    assert np.allclose(geometry.direction, read.direction, atol=1e-6) and np.allclose(geometry.spacing, read.spacing)
    assert np.array_equal(masks["Patient bone"], read.mask)


def test_two_series_a_stack_no_gantry_tilts_so_far_and_missing_slices_are_refused(tmp_path, oblique_case):
    _, ct = oblique_case
    both = write_series(ct, tmp_path / "study", description="Head CT")
    write_series(ct, both, uid="1.2.826.0.1.3680043.2.1125.9", description="Bone window")
    with pytest.raises(SkullVAEError, match=r"holds 2 DICOM series \(7 Head CT \(48 files\); 9 Bone window .*--series"):
        series_information(both)
    for chosen in ("9", "bone WINDOW", "1.2.826.0.1.3680043.2.1125.9.2"):  # its number, description or UID
        assert series_information(both, chosen).files[0].endswith("9_0000.dcm")
    with pytest.raises(SkullVAEError, match="no series matches --series '4'"):
        series_information(both, "4")
    with pytest.raises(SkullVAEError, match=r"the DICOM series' slices step 50.0° off their normal"):
        read_input_skull(write_series(ct, tmp_path / "tilted", tilt_deg=50.0))
    with pytest.raises(SkullVAEError, match="missing or uneven slices .*a gap of 12.80 mm"):
        read_input_skull(write_series(ct, tmp_path / "gap", skip=(20, 21, 22)))
    with pytest.raises(SkullVAEError, match="a DICOM series of modality MR .*bone is found in a CT"):
        read_input_skull(write_series(ct, tmp_path / "mr", modality="MR"))
    with pytest.raises(SkullVAEError, match="no DICOM series in this folder"):
        read_input_skull(tmp_path)  # folders of series, none of its own


def test_a_series_headers_are_read_once_until_its_files_change(tmp_path, oblique_case):
    """A completion checks its input, then reads it; a batch sizes its workers by it first: GDCM reads every file's
    header each time (0.25 s for 200 slices), so the checked header is kept, keyed by the folder's files. A slice
    taken away is seen at the next look."""
    from SkullVAELib.io.dicom import _checked_series

    _, ct = oblique_case
    folder = write_series(ct, tmp_path / "kept")
    first = series_information(folder)
    hits = _checked_series.cache_info().hits
    assert series_information(folder) is first and _checked_series.cache_info().hits == hits + 1
    sorted(folder.iterdir())[20].unlink()
    again = series_information(folder)
    assert again is not first and again.stack.heights is not None and len(again.files) == 47


def test_a_missing_slice_is_blended_from_its_neighbours(tmp_path, oblique_case):
    """One slice missing from a series: read onto the series' own grid, every other slice as scanned, the missing
    one between its neighbours, and the result says so."""
    skull, ct = oblique_case
    read = read_input_skull(write_series(ct, tmp_path / "gap", skip=(20,)))
    assert read.shape == skull.shape and np.allclose(read.origin, skull.origin, atol=1e-3)
    kept = [k for k in range(skull.shape[2]) if k != 20]
    assert np.array_equal(read.mask[:, :, kept], skull.mask[:, :, kept])
    blended, below, above = read.mask[:, :, 20], skull.mask[:, :, 19], skull.mask[:, :, 21]
    assert not (blended & ~(below | above)).any()  # no bone where neither neighbour has it
    assert not ((below & above) & ~blended).any() and blended.sum() > 0.8 * (below & above).sum()
    assert any("unevenly spaced slices (steps 3.20-6.40 mm" in w for w in read.metadata["warnings"])


def test_one_file_of_a_series_reads_its_series_and_a_multi_frame_file_is_named(tmp_path, oblique_case, capsys):
    """A DICOM file given as the input is read as the series it belongs to (as Slicer's "Add data" takes one), in a
    study folder of several series too; a multi-frame file is refused by name, not as "one slice"."""
    skull, ct = oblique_case
    study = write_series(ct, tmp_path / "study", description="Head CT")
    write_series(ct, study, uid="1.2.826.0.1.3680043.2.1125.9", description="Bone window")
    read = read_input_skull(study / "9_0005.dcm")
    assert np.array_equal(read.mask, skull.mask) and read.metadata["source"] == str(study)
    assert series_information(study, "9").files == input_information(study / "9_0005.dcm").files
    out = tmp_path / "one.seg.nrrd"
    argv = ["complete", "--input", str(study / "7_0000.dcm"), "--output", str(out), "--no-mirror", "--progress", "none"]
    assert main(argv) == 0 and np.array_equal(read_segmentation(out)[1]["Patient bone"], skull.mask)
    frames = tmp_path / "frames"
    frames.mkdir()
    with keeping_locale():
        sitk.WriteImage(sitk.Cast(ct + 1000, sitk.sitkUInt16), str(frames / "volume.dcm"))  # one multi-frame file
    with pytest.raises(SkullVAEError, match=r"one multi-frame file \(48 frames\)"):
        read_input_skull(frames / "volume.dcm")
    dicomdir = tmp_path / "DICOMDIR"  # a DICOM file that holds no image
    dicomdir.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x04\x00\x00\x00")
    with pytest.raises(SkullVAEError, match="DICOMDIR: cannot read it as a DICOM image"):
        read_input_skull(dicomdir)
    files = sorted(str(p) for p in study.glob("7_*.dcm"))[:3] + [str(study / "9_0001.dcm")]
    assert [p.name for p in batch_inputs(files)] == ["7_0000.dcm", "9_0001.dcm"]  # one case a series
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_text("not a DICOM file")
    assert main(["complete", "--input", str(not_dicom), "--output", str(tmp_path / "x.seg.nrrd")]) == 2
    assert "notes.dcm" in capsys.readouterr().err
