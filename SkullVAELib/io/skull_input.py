"""Which voxels of an input are the skull: the bone of a mask or a CT (a file, or a DICOM series' folder), or
chosen segments and labels.

A segmentation made in Slicer, saved as a ``.seg.nrrd``, often holds more than the skull (a brain, the skin, a
mandible); a label map holds one value per structure. Read as a mask, every nonzero voxel was bone: a brain under
a cranial defect closed the hole, and the completion said "no cranial defect found". Such a file is now read by
its segments or labels: the ones named (``segments``: a segment's name in a ``.seg.nrrd``, or a label value), or
the only one there is; several and none named is refused in one line that lists them.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SkullVAELib.core.config import MESH_EXTENSIONS, MESH_VOXEL_MM
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import DEFAULT_HU_THRESHOLD, SkullImage, read_skull, skull_from_image
from SkullVAELib.io.outputs import SEGMENTATION_EXTENSIONS, has_extension
from SkullVAELib.io.values import check_input_kind

SEGMENTATION_SUFFIX = SEGMENTATION_EXTENSIONS[0]


def is_segmentation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Slicer segmentation file (``.seg.nrrd``, any case)."""
    return has_extension(path, SEGMENTATION_EXTENSIONS)


def is_mesh_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a surface file (``core.config.MESH_EXTENSIONS``, any case; read by ``io.mesh``)."""
    return Path(path).suffix.lower() in MESH_EXTENSIONS


@dataclass(frozen=True)
class SkullReading:
    """How an input is read (the CLI's ``--input-kind``, ``--hu-threshold``, ``--segment``, ``--series``,
    ``--mesh-voxel-mm``, ``--stl-frame``): what :func:`read_input_skull` and :func:`input_information` take (and,
    for a surface, :mod:`SkullVAELib.io.mesh`), in one value a batch hands its workers."""

    kind: str = "auto"
    hu_threshold: float = DEFAULT_HU_THRESHOLD
    segments: tuple[str, ...] = ()
    series: str | None = None
    mesh_voxel_mm: float = MESH_VOXEL_MM  # a surface's voxels (``io.mesh``)
    stl_frame: str = "LPS"  # a surface's coordinates where its header names none

    def read(self, path: str | os.PathLike) -> SkullImage:
        """The skull of ``path`` (:func:`read_input_skull`)."""
        if is_mesh_file(path):
            from SkullVAELib.io.mesh import read_mesh_skull  # VTK's readers: loaded for a surface alone

            if self.segments:
                raise SkullVAEError("--segment chooses a segmentation's segments or a label map's labels", path)
            return read_mesh_skull(path, self.mesh_voxel_mm, self.stl_frame)
        return read_input_skull(path, self.kind, self.hu_threshold, self.segments, self.series)

    def information(self, path: str | os.PathLike, verify_voxels: bool = True):
        """The checked header of ``path`` (:func:`input_information`; a surface's: the grid it is voxelized onto)."""
        if is_mesh_file(path):
            from SkullVAELib.io.mesh import mesh_information

            return mesh_information(path, self.mesh_voxel_mm, self.stl_frame)
        return input_information(path, verify_voxels, self.series)


def read_input_skull(
    path: str | os.PathLike,
    kind: str = "auto",
    hu_threshold: float = DEFAULT_HU_THRESHOLD,
    segments: Sequence[str] = (),
    series: str | None = None,
) -> SkullImage:
    """The skull of ``path`` as a boolean mask on its exact geometry.

    Args:
        path: a Slicer segmentation (``.seg.nrrd``), a folder of one DICOM series or one of its files (``io.dicom``),
            or any volume :func:`~SkullVAELib.io.image.read_skull` reads.
        kind: how a volume's values are read (``read_skull``); a segmentation's are its segments.
        hu_threshold: the bone threshold of a CT (HU).
        segments: the skull's segment(s): names in a ``.seg.nrrd`` (case-insensitive), label values in a label
            map; empty: the only segment or label there is.
        series: a DICOM folder's series where it holds several (its number, description or UID).

    Raises:
        SkullVAEError naming the file: ``read_skull``'s errors; several segments or labels and none chosen, a
        chosen one missing, or nothing chosen that holds bone.
    """
    check_input_kind(kind)
    if is_segmentation_file(path):
        return _segmentation_skull(Path(path), segments)
    labels = [_label_value(text, path) for text in segments] or None
    dicom = _dicom_series(path, series)
    if dicom is not None:
        from SkullVAELib.io.dicom import read_dicom_series, series_information

        folder, series = dicom
        notes = series_information(folder, series).notes  # a tilted gantry's resampling
        return skull_from_image(read_dicom_series(folder, series), folder, kind, hu_threshold, labels, notes)
    return read_skull(path, kind=kind, hu_threshold=hu_threshold, labels=labels)


def _dicom_series(path: str | os.PathLike, series: str | None) -> tuple[Path, str | None] | None:
    """(folder, series) of a DICOM input: a folder and ``series`` as given; a DICOM file, its folder and its own
    series (unless ``series`` chooses another); None for any other input."""
    from SkullVAELib.io.dicom import dicom_file_series

    if Path(path).is_dir():
        return Path(path), series
    found = None if is_segmentation_file(path) else dicom_file_series(path)
    return None if found is None else (found[0], series or found[1])


def input_information(path: str | os.PathLike, verify_voxels: bool = True, series: str | None = None):
    """The checked header of an input (``io.inputs.read_information``'s reader; a DICOM folder's
    ``io.dicom.SeriesInformation`` of ``series``): size, spacing, origin, direction and pixel type, no voxel read."""
    from SkullVAELib.io.inputs import read_information

    dicom = _dicom_series(path, series)
    if dicom is not None:
        from SkullVAELib.io.dicom import series_information

        return series_information(*dicom)
    return read_information(path, verify_voxels=verify_voxels, layers=is_segmentation_file(path))


def _segmentation_skull(path: Path, wanted: Sequence[str]) -> SkullImage:
    """The union of the chosen segments of the ``.seg.nrrd`` at ``path`` (:func:`read_input_skull`); a mask is
    built for those alone (a file of 100 segments holds 100 masks' worth of voxels)."""
    from SkullVAELib.io.segfile import read_segment_voxels, segment_mask

    geometry, voxels, segments = read_segment_voxels(path)
    names = [str(segment["name"]) for segment in segments]
    listed = ", ".join(repr(name) for name in names) or "none"
    if not segments:
        raise SkullVAEError("the segmentation holds no segments; segment the skull first", path)
    same = [name for name, count in Counter(n.lower() for n in names).items() if count > 1]
    if same:
        raise SkullVAEError(f"the segmentation holds several segments named {same[0]!r}; rename them apart", path)
    if not wanted and len(segments) > 1:
        raise SkullVAEError(
            f"the segmentation holds {len(segments)} segments ({listed}); choose the skull's with --segment NAME "
            "(repeat it for several)",
            path,
        )
    by_name = {name.lower(): index for index, name in enumerate(names)}
    chosen = list(range(len(segments))) if not wanted else []
    for text in wanted:
        if text.lower() not in by_name:
            raise SkullVAEError(f"the segmentation has no segment {text!r} (it has {listed})", path)
        chosen += [by_name[text.lower()]] if by_name[text.lower()] not in chosen else []
    mask = np.zeros(geometry.shape, dtype=bool)
    for index in chosen:
        mask |= segment_mask(voxels, segments[index])
    chosen_names = [names[index] for index in chosen]
    if not mask.any():
        raise SkullVAEError(f"empty mask: the segment(s) {', '.join(map(repr, chosen_names))} hold no voxels", path)
    metadata = {**geometry.metadata, "kind": "segmentation", "segments": chosen_names}
    return SkullImage(mask, geometry.origin, geometry.spacing, geometry.direction, metadata)


def _label_value(text: str, path: str | os.PathLike) -> int:
    """The label value ``text`` gives for a volume (a label map): a whole number 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise SkullVAEError(
            f"--segment {text!r}: a volume's segments are label values (whole numbers); names are for a "
            f"{SEGMENTATION_SUFFIX}",
            path,
        ) from None
    if not 1 <= value <= 65535:
        raise SkullVAEError(f"--segment {value}: a label value is 1..65535", path)
    return value
