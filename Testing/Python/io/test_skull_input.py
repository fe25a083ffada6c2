"""io.skull_input: the skull of an input file, by the segments or labels chosen (a Slicer segmentation, a label map)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.raycast import cranial_centre
from SkullVAELib.io.segfile import Segment, write_segmentation
from SkullVAELib.io.skull_input import is_segmentation_file, read_input_skull


@pytest.fixture(scope="module")
def skull_and_brain():
    """(a phantom with a cranial defect, a brain bool (I, J, K): a ball inside the skull, clear of its bone)."""
    defective, _ = cranial_defect(make_phantom(1, (64, 64, 48), (3.2, 3.2, 3.2)), 1, style="skullbreak")
    points = np.indices(defective.shape).reshape(3, -1).T * defective.spacing + defective.origin
    brain = (np.linalg.norm(points - cranial_centre(defective), axis=1) < 50.0).reshape(defective.shape)
    return defective, brain & ~defective.mask


@pytest.mark.parametrize("overlapping", [False, True], ids=["labelmap", "layers"])
def test_a_segmentation_is_read_by_the_segments_chosen(tmp_path, skull_and_brain, overlapping):
    """A .seg.nrrd with the skull and a brain (as separate labels, or overlapping: a 4D file of layers) is refused
    without a choice, and read by the named segment(s) (any case) on the file's geometry."""
    defective, brain = skull_and_brain
    other = defective.mask | brain if overlapping else brain
    path = tmp_path / "Case 1.seg.nrrd"
    write_segmentation(path, defective, [Segment("Skull", defective.mask), Segment("Brain", other)])
    assert is_segmentation_file(path) and is_segmentation_file(tmp_path / "X.SEG.NRRD")
    with pytest.raises(
        SkullVAEError, match=r"holds 2 segments \('Skull', 'Brain'\); choose the skull's with --segment"
    ):
        read_input_skull(path)
    skull = read_input_skull(path, segments=["skull"])
    assert np.array_equal(skull.mask, defective.mask) and skull.same_geometry(defective)
    assert skull.metadata["kind"] == "segmentation" and skull.metadata["segments"] == ["Skull"]
    both = read_input_skull(path, segments=["Skull", "Brain", "skull"])
    assert np.array_equal(both.mask, defective.mask | other) and both.metadata["segments"] == ["Skull", "Brain"]
    with pytest.raises(SkullVAEError, match=r"has no segment 'Bone' \(it has 'Skull', 'Brain'\)"):
        read_input_skull(path, segments=["Bone"])


def test_a_segmentation_of_one_segment_needs_no_choice_and_an_empty_one_is_refused(tmp_path, skull_and_brain):
    defective, _ = skull_and_brain
    path = tmp_path / "one.seg.nrrd"
    write_segmentation(path, defective, [Segment("Bone", defective.mask)])
    assert np.array_equal(read_input_skull(path).mask, defective.mask)
    write_segmentation(
        path, defective, [Segment("Bone", defective.mask), Segment("Empty", np.zeros_like(defective.mask))]
    )
    with pytest.raises(SkullVAEError, match="empty mask: the segment"):
        read_input_skull(path, segments=["Empty"])


def test_a_label_maps_segments_are_label_values(tmp_path, skull_and_brain):
    """For a volume, ``segments`` are label values; a name there is refused in one line saying what is meant."""
    defective, brain = skull_and_brain
    labels = defective.mask.astype(np.uint8) + 2 * brain.astype(np.uint8)
    image = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    image.CopyInformation(defective.to_sitk())
    path = tmp_path / "labels.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(SkullVAEError, match=r"holds 2 values \(1, 2\): a label map\?"):
        read_input_skull(path)
    assert np.array_equal(read_input_skull(path, segments=["1"]).mask, defective.mask)
    with pytest.raises(SkullVAEError, match="a volume's segments are label values"):
        read_input_skull(path, segments=["Skull"])
    with pytest.raises(SkullVAEError, match="a label value is 1..65535"):
        read_input_skull(path, segments=["0"])


def test_segments_of_one_name_are_refused_not_guessed(tmp_path, skull_and_brain):
    """Masks keyed by name kept the last of two segments named alike: a file of two "Skull" segments read as the
    other one, and "Skull" beside "skull" chose the lower-case one. Such a file is refused, naming the name."""
    defective, brain = skull_and_brain
    path = tmp_path / "twice.seg.nrrd"
    for other in (b"Skull", b"skull"):
        write_segmentation(path, defective, [Segment("Skull", defective.mask), Segment("Zzzzz", brain)])
        path.write_bytes(path.read_bytes().replace(b"Zzzzz", other, 1))  # our writer refuses such names; Slicer's not
        with pytest.raises(SkullVAEError, match="several segments named 'S?s?kull'; rename them apart"):
            read_input_skull(path, segments=["Skull"])
