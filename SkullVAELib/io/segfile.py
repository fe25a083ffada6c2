"""3D Slicer segmentation files (``.seg.nrrd``) with named, coloured, overlapping segments.

Written with slicerio (Slicer's own segmentation NRRD fields, via pynrrd) on exactly the
geometry of a :class:`SkullImage`. Overlapping segments (the completed skull contains the
implant) go to separate layers: the file is then 4D (``kinds: list domain domain domain``),
as Slicer itself writes overlapping segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.config import IMPLANT_COLOR
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_volume
from SkullVAELib.io.image import SkullImage, exact_axis_vectors, geometry_from_axis_vectors
from SkullVAELib.io.inputs import require_regular_file

# Colours (RGB in [0, 1]) of the segments SkullVAE writes; bone-like and the one implant colour.
DEFAULT_COLORS: dict[str, tuple[float, float, float]] = {
    "Completed skull": (0.89, 0.85, 0.79),
    "Patient bone": (0.89, 0.85, 0.79),
    "Implant": IMPLANT_COLOR,
    "Defective skull": (0.70, 0.74, 0.80),
    "Uncertain": (0.85, 0.25, 0.25),
}
_FALLBACK_COLORS = ((0.35, 0.65, 0.85), (0.45, 0.75, 0.45), (0.75, 0.45, 0.75), (0.9, 0.55, 0.3))


@dataclass
class Segment:
    """One named segment.

    Attributes:
        name: shown in Slicer, e.g. "Completed skull".
        mask: bool (I, J, K) on the geometry of the file.
        color: RGB in [0, 1]; None picks ``DEFAULT_COLORS[name]`` (or a fallback colour).
    """

    name: str
    mask: np.ndarray
    color: tuple[float, float, float] | None = None


def _color(segment: Segment, index: int) -> tuple[float, float, float]:
    if segment.color is not None:
        return tuple(float(c) for c in segment.color)  # type: ignore[return-value]
    return DEFAULT_COLORS.get(segment.name, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _assign_layers(masks: list[np.ndarray]) -> list[int]:
    """Greedy layer per segment: the first layer none of whose segments it overlaps."""
    # the union of each layer's masks: the caller's first mask itself until another joins (a new
    # array then); the last mask joins no union, so two segments cost no whole-scan copy
    layers: list[np.ndarray] = []
    chosen = []
    for n, mask in enumerate(masks):
        for index, union in enumerate(layers):
            if not np.logical_and(union, mask).any():
                if n < len(masks) - 1:
                    layers[index] = union | mask
                chosen.append(index)
                break
        else:
            layers.append(mask)
            chosen.append(len(layers) - 1)
    return chosen


def write_segmentation(path: str | Path, like: SkullImage, segments: list[Segment], compression_level: int = 3) -> None:
    """Write ``segments`` as a Slicer ``.seg.nrrd`` on ``like``'s exact geometry (atomic).

    Args:
        path: output file, normally ending in ``.seg.nrrd``.
        like: the geometry (origin, spacing, direction) and shape (I, J, K).
        segments: names must be unique; masks may overlap (written as layers).
        compression_level: gzip level 0-9 (0 = stored). On SkullFix-size segmentations levels
            1-3 cost the same ~0.25-0.3 s CPU within noise and 3 writes the smallest file of them
            (~1 MB); 6 costs 1.8x, 9 about 11x; raw encoding would save ~0.1 s for a 60 MB file
            (docs/BENCHMARKS.md, section 2c).
    """
    import slicerio

    path = Path(path)
    if not isinstance(compression_level, (int, np.integer)) or not 0 <= compression_level <= 9:
        raise SkullVAEError(f"compression level must be an integer 0-9, got {compression_level!r}", path)
    names = [s.name for s in segments]
    if not segments:
        raise SkullVAEError("no segments to write", path)
    if len(set(names)) != len(names):
        raise SkullVAEError(f"segment names must be unique, got {names}", path)
    masks = []  # in memory order (K, J, I): SimpleITK masks are Fortran-ordered (I, J, K)
    for segment in segments:
        mask = np.asarray(segment.mask, dtype=bool)
        if mask.shape != like.shape:
            raise SkullVAEError(f"segment {segment.name!r} has shape {mask.shape}, the image {like.shape}", path)
        masks.append(mask.T)
    layer_of = _assign_layers(masks)
    n_layers = max(layer_of) + 1
    # (K, J, I, L) C-ordered = (L, I, J, K) Fortran-ordered, the byte order of the NRRD file:
    # pynrrd then writes it without another copy.
    voxels_kjil = np.zeros((*masks[0].shape, n_layers), dtype=np.uint8)
    entries = []
    label_in_layer = [0] * n_layers
    for index, (segment, mask, layer) in enumerate(zip(segments, masks, layer_of, strict=True)):
        label_in_layer[layer] += 1
        np.copyto(voxels_kjil[..., layer], label_in_layer[layer], where=mask)
        entries.append(
            {
                "id": f"Segment_{index + 1}",
                "name": segment.name,
                "color": _color(segment, index),
                "labelValue": label_in_layer[layer],
                "layer": layer,
                "nameAutoGenerated": False,
                "colorAutoGenerated": False,
            }
        )
    voxels = voxels_kjil.T  # (L, I, J, K)
    # Axis vectors that ITK reads back as exactly (spacing, direction): geometry bit for bit.
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.stack(exact_axis_vectors(like.spacing, like.direction), axis=1)
    ijk_to_lps[:3, 3] = like.origin
    segmentation = {
        "voxels": voxels[0] if n_layers == 1 else voxels,  # 3D file when nothing overlaps
        "ijkToLPS": ijk_to_lps,
        "segments": entries,
        "containedRepresentationNames": ["Binary labelmap", "Closed surface"],  # Slicer shows it in 3D at once
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=compression_level)


def read_segmentation(path: str | Path) -> tuple[SkullImage, dict[str, np.ndarray]]:
    """Read a ``.seg.nrrd``: (geometry as a SkullImage with an empty mask, {name: bool mask (I, J, K)}).

    Raises SkullVAEError naming the file when it is missing or not a segmentation.
    """
    import nrrd
    import slicerio

    path = require_regular_file(path)
    try:
        header = nrrd.read_header(str(path))
        sizes = [int(s) for s in header["sizes"]]
    except Exception as exc:  # pynrrd raises many types for a bad header
        raise SkullVAEError(f"cannot read as a Slicer segmentation: {exc}", path) from None
    check_volume(sizes, 1, path, what="segmentation")  # before pynrrd allocates the voxels
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # pynrrd/slicerio raise many types for a bad file
        raise SkullVAEError(f"cannot read as a Slicer segmentation: {exc}", path) from None
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4):
        raise SkullVAEError(f"expected a 3D or layered 4D segmentation, got {voxels.ndim}D voxels", path)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=np.float64)
    spacing, direction = geometry_from_axis_vectors(ijk_to_lps[:3, :3])
    shape = voxels.shape[-3:]
    geometry = SkullImage(
        np.zeros(shape, dtype=bool), ijk_to_lps[:3, 3].copy(), spacing, direction, {"source": str(path)}
    )
    masks: dict[str, np.ndarray] = {}
    for segment in segmentation.get("segments", []):
        layer_voxels = voxels if voxels.ndim == 3 else voxels[int(segment.get("layer", 0))]
        masks[segment["name"]] = layer_voxels == int(segment["labelValue"])
    return geometry, masks
