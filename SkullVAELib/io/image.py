"""`SkullImage`: a boolean skull mask with its physical geometry.

Array order: ``mask[i, j, k]`` is indexed like ITK/NRRD voxel indices (x fastest in the
file), shape ``(I, J, K)``; the model grid uses the same order (e.g. 256×256×128).
Geometry is kept exactly as ITK reports it (LPS physical space, millimetres):
``origin`` (3,), ``spacing`` (3,), ``direction`` (3, 3) whose column ``c`` is the
physical direction of index axis ``c``. Conversion to Slicer's RAS is left to Slicer's
storage nodes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SkullVAELib.core.atomic import atomic_path, is_temporary_name, make_temporary_folder, write_error
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.ct_bone import bone_of_ct
from SkullVAELib.io.inputs import read_information
from SkullVAELib.io.outputs import has_extension
from SkullVAELib.io.values import bone_of_labels, check_input_kind, detect_kind, refuse_a_label_map


@dataclass(eq=False)
class SkullImage:
    """A binary volume plus its geometry.

    Attributes:
        mask: bool array, shape (I, J, K), True = bone.
        origin: (3,) float64, physical position of voxel (0, 0, 0) in mm (LPS).
        spacing: (3,) float64, voxel size in mm along i, j, k.
        direction: (3, 3) float64, column c = unit direction of index axis c.
        metadata: free-form provenance (source path, detected kind, threshold, ...).
    """

    mask: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.mask.ndim != 3:
            raise ValueError(f"SkullImage mask must be 3D, got shape {self.mask.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts (I, J, K)."""
        return tuple(int(s) for s in self.mask.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    def with_mask(self, mask: np.ndarray, **metadata) -> SkullImage:
        """A new image on exactly this geometry with another mask (shape must match)."""
        mask = np.asarray(mask)
        if mask.shape != self.mask.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {self.mask.shape}")
        return SkullImage(
            mask, self.origin.copy(), self.spacing.copy(), self.direction.copy(), {**self.metadata, **metadata}
        )

    def same_geometry(self, other: SkullImage) -> bool:
        """True when both lie on the identical voxel grid (bit-for-bit geometry)."""
        return (
            self.shape == other.shape
            and np.array_equal(self.origin, other.origin)
            and np.array_equal(self.spacing, other.spacing)
            and np.array_equal(self.direction, other.direction)
        )

    def index_to_physical(self) -> np.ndarray:
        """(4, 4) affine mapping homogeneous voxel index (i, j, k, 1) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def physical_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """float64 (..., 3): the continuous voxel index (i, j, k) of the LPS ``points_mm`` (..., 3) (mm)."""
        affine = self.index_to_physical()
        return (np.asarray(points_mm, dtype=np.float64) - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T

    def index_box(self, points_mm: np.ndarray, margin: int = 2) -> tuple[slice, ...] | None:
        """The index box (3 slices) of this grid that holds the LPS ``points_mm`` (N, 3) plus ``margin``
        voxels on every side, clipped to the grid; None when it misses the grid."""
        index = self.physical_to_index(points_mm)
        lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - margin, 0)
        hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + margin + 1, np.asarray(self.shape))
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))

    # --- SimpleITK bridges (array order: sitk arrays are (K, J, I)) ---------------
    def to_sitk(self, array: np.ndarray | None = None, pixel_type=np.uint8, box: tuple[slice, ...] | None = None):
        """An ITK image of ``array`` (default: the mask) on this geometry, or, with ``box`` (from
        :meth:`index_box`), of an array of the box's shape on that part of the grid."""
        data = (self.mask if box is None else self.mask[box]) if array is None else np.asarray(array)
        shape = self.mask.shape if box is None else tuple(s.stop - s.start for s in box)
        if data.shape != shape:
            raise ValueError(f"array shape {data.shape} != image shape {shape}")
        origin = self.origin if box is None else self.index_to_physical()[:3] @ np.r_[[s.start for s in box], 1.0]
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.astype(pixel_type, copy=False).transpose(2, 1, 0)))
        img.SetOrigin(tuple(float(v) for v in origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return img

    @staticmethod
    def geometry_from_sitk(img: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(origin, spacing, direction) of a 3D ITK image, exactly as stored."""
        return (
            np.array(img.GetOrigin(), dtype=np.float64),
            np.array(img.GetSpacing(), dtype=np.float64),
            np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3),
        )


# --- reading and writing files ------------------------------------------------------
# Bone threshold for CT input: 300 HU separates cortical/cancellous bone (≈ 400–2000 HU)
# from soft tissue and contrast-free brain (< 100 HU) with margin for partial volume.
DEFAULT_HU_THRESHOLD = 300.0
ALL_BONE_FRACTION = 0.999  # a "mask" this full is not a skull segmentation


def _read_itk(path: str | Path, warnings: list[str] | None = None) -> sitk.Image:
    """Read any ITK file as a 3D scalar image, or raise SkullVAEError naming the file.

    The header is checked first (regular file, finite and plausible geometry, 3D scalar, size
    limits, complete NIfTI; see :mod:`SkullVAELib.io.inputs`), so no voxel is allocated for a bad
    or hostile file. Defaults assumed for missing header fields go to ``warnings``.
    """
    path = Path(path)
    reader = read_information(path, warnings)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        last = reason[-1].strip() if reason else ""
        raise SkullVAEError(
            "cannot read this file as an image (.nrrd, .nii, .nii.gz, .mha, .mhd)" + (f"; {last}" if last else ""), path
        ) from None
    except MemoryError:
        raise SkullVAEError("not enough memory to read this image", path) from None
    return img


def check_same_grid(image: SkullImage, reference: SkullImage, path: str | Path, what: str) -> None:
    """Refuse (one line naming ``path``) an ``image`` whose voxel grid is not ``reference``'s: another shape,
    or a spacing, origin or direction that differs beyond rounding (1e-4 relative; origin 1e-3 voxel)."""
    if image.shape != reference.shape:
        raise SkullVAEError(f"shape {image.shape} differs from {what}'s {reference.shape} (not the same grid)", path)
    scale = float(np.max(reference.spacing))
    checks = (
        ("spacing", image.spacing, reference.spacing, 1e-4 * scale),
        ("origin", image.origin, reference.origin, 1e-3 * scale),
        ("direction", image.direction, reference.direction, 1e-4),
    )
    for name, mine, theirs, tol in checks:
        if not np.allclose(mine, theirs, rtol=0.0, atol=tol):
            ours, other = (np.round(np.ravel(v), 4).tolist() for v in (mine, theirs))
            raise SkullVAEError(f"{name} {ours} differs from {what}'s {other} (not the same voxel grid)", path)


def read_skull(
    path: str | Path,
    kind: str = "auto",
    hu_threshold: float = DEFAULT_HU_THRESHOLD,
    labels: Sequence[int] | None = None,
) -> SkullImage:
    """Read a skull as a boolean mask on its exact geometry.

    Args:
        path: .nrrd, .nii, .nii.gz, .mha or .mhd file holding a 3D scalar volume.
        kind: "binary" (nonzero = bone), "ct" (bone = HU ≥ ``hu_threshold``, then the
            largest connected component) or "auto" (binary if the values are non-negative
            integers ≤ 255; CT if they span air (< -200) to bone (> 300)).
        hu_threshold: bone threshold in Hounsfield units for CT (default 300 HU).
        labels: a label map's values that are bone (any of them); None: every nonzero voxel, and a map of
            several values is refused unless ``kind`` is "binary" (:func:`~SkullVAELib.io.values.refuse_a_label_map`).

    Returns:
        SkullImage with mask (I, J, K); ``metadata`` holds ``source``, ``kind``, for CT
        ``hu_threshold``, and ``warnings``: defaults assumed for missing header fields (e.g. "the
        header gives no voxel spacing; 1 mm was assumed"), to be shown with the result.

    Raises:
        SkullVAEError naming the file: missing, unreadable, 2D, 4D/vector, geometry not finite or
        outside the plausible range (``io.headers.SPACING_RANGE_MM``), NaN or infinite values,
        neither mask nor CT, empty mask, or all-bone mask; a label map of several values and none chosen.
    """
    check_input_kind(kind)
    path = Path(path)
    warnings: list[str] = []
    return skull_from_image(_read_itk(path, warnings), path, kind, hu_threshold, labels, warnings)


def skull_from_image(
    img: sitk.Image,
    path: str | Path,
    kind: str = "auto",
    hu_threshold: float = DEFAULT_HU_THRESHOLD,
    labels: Sequence[int] | None = None,
    warnings: list[str] | None = None,
) -> SkullImage:
    """The skull of a 3D scalar ``img`` read from ``path`` (named in errors and ``metadata["source"]``), as
    :func:`read_skull` reads a file's; ``warnings``: what reading it assumed."""
    warnings = [] if warnings is None else warnings
    values = sitk.GetArrayViewFromImage(img)  # (K, J, I) view, no copy
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        what = "NaN" if np.isnan(values).any() else "infinite (±inf)"
        raise SkullVAEError(f"contains {what} values", path)
    if labels and kind == "ct":
        raise SkullVAEError("--segment chooses a label map's labels; a CT's bone is chosen by --hu-threshold", path)
    detected = "binary" if labels else (detect_kind(values, path) if kind == "auto" else kind)  # labels: a map
    metadata: dict = {"source": str(path), "kind": detected, "warnings": warnings}
    if detected == "binary":
        mask_kji = bone_of_labels(values, labels, path)
    else:
        mask_kji, read_at, notes = bone_of_ct(img, float(hu_threshold), path)
        metadata["hu_threshold"] = read_at
        warnings.extend(notes)
    n_bone = np.count_nonzero(mask_kji)
    fraction = n_bone / mask_kji.size
    if n_bone == 0:
        raise SkullVAEError(
            "empty mask: no bone voxels" + (f" above {hu_threshold:g} HU" if detected == "ct" else ""), path
        )
    if fraction >= ALL_BONE_FRACTION:
        raise SkullVAEError(
            f"all-bone mask ({100 * fraction:.2f}% of voxels are bone); expected a skull segmentation", path
        )
    if detected == "binary" and kind == "auto" and not labels:
        refuse_a_label_map(values, mask_kji, path)
    del values
    origin, spacing, direction = SkullImage.geometry_from_sitk(img)
    return SkullImage(mask_kji.transpose(2, 1, 0), origin, spacing, direction, metadata)


def read_scalar(path: str | Path) -> tuple[np.ndarray, SkullImage]:
    """Read a scalar map: (float32 array (I, J, K), SkullImage geometry with an all-False mask).

    Raises SkullVAEError naming the file when missing, unreadable, 2D or 4D.
    """
    path = Path(path)
    img = _read_itk(path)
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False).transpose(2, 1, 0)
    origin, spacing, direction = SkullImage.geometry_from_sitk(img)
    geometry = SkullImage(np.zeros(array.shape, dtype=bool), origin, spacing, direction, {"source": str(path)})
    return array, geometry


def _exact_space_direction(spacing: float, direction: np.ndarray) -> np.ndarray:
    """The NRRD axis vector v that ITK reads back as exactly (spacing, direction).

    NRRD stores v = spacing · direction; ITK (teem's nrrdSpacingCalculate) reads
    spacing = sqrt(v0² + v1² + v2²), direction = v · (1 / spacing). The plain product
    often comes back one ulp off (69 of the 240 SkullFix files), so we try the product's
    neighbours up to 3 ulps per component and keep the first that reproduces both bit for bit
    (hand-written because no library writes NRRD geometry exactly; falls back to the product).
    """
    base = direction * spacing
    steps = np.arange(-3, 4)
    offsets = np.array(np.meshgrid(steps, steps, steps, indexing="ij")).reshape(3, -1).T
    offsets = offsets[np.argsort(np.abs(offsets).sum(1), kind="stable")]
    ulp = np.spacing(base)
    cand = base + offsets * ulp  # exact: multiples of one ulp within the same binade or next
    norm = np.sqrt((cand[:, 0] * cand[:, 0] + cand[:, 1] * cand[:, 1]) + cand[:, 2] * cand[:, 2])
    ok = (norm == spacing) & np.all(cand * (1.0 / norm)[:, None] == direction, axis=1)
    return cand[int(np.argmax(ok))] if ok.any() else base


def exact_axis_vectors(spacing: np.ndarray, direction: np.ndarray) -> list[np.ndarray]:
    """The three NRRD axis vectors (LPS mm per voxel step) that read back as exactly
    ``spacing`` (3,) and ``direction`` (3, 3) (column c = axis c); see ``_exact_space_direction``."""
    spacing = np.asarray(spacing, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    return [_exact_space_direction(float(spacing[c]), direction[:, c]) for c in range(3)]


def _patch_nrrd_space_directions(path: Path, img: sitk.Image) -> None:
    """Rewrite the ``space directions`` header line of a NRRD file ITK just wrote (see above)."""
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    vectors = exact_axis_vectors(spacing, direction)
    line = "space directions: " + " ".join("(" + ",".join(repr(float(v)) for v in vec) + ")" for vec in vectors)
    data = path.read_bytes()
    end = data.index(b"\n\n")
    header = data[:end].decode("ascii").split("\n")
    header = [line if h.startswith("space directions:") else h for h in header]
    path.write_bytes("\n".join(header).encode("ascii") + data[end:])


def write_itk_nrrd(img: sitk.Image, path: str | Path, compression_level: int = -1, compress: bool = True) -> None:
    """Write ``img`` as a NRRD (gzip unless ``compress`` is False) at ``path`` itself (the caller
    makes it atomic) with axis vectors that read back as exactly the image's spacing and direction.

    ``compression_level``: zlib level 1-9 (ITK raises 0 to 1), -1 for ITK's default. ITK's NRRD
    writer (teem, as in Slicer) deflates with zlib-ng: 43 ms at level 2 for a SkullFix
    segmentation's 59 MB of labels, where pynrrd's zlib takes 116 ms at level 3 for a 1 % smaller
    file (docs/BENCHMARKS.md, section 2c).
    """
    sitk.WriteImage(img, str(path), bool(compress), int(compression_level))
    _patch_nrrd_space_directions(Path(path), img)


def _write_mhd(img: sitk.Image, path: Path, folder: Path, compress: bool) -> Path:
    """Write header + data file into ``folder``; the header is ``folder / path.name``. ITK's MetaImage
    writer wants a lower-case ``.mhd`` (``X.MHD`` would become ``X.mhd``): written so, then renamed."""
    header = folder / (path.name[:-4] + ".mhd")
    sitk.WriteImage(img, str(header), compress)
    if header.name != path.name:
        os.replace(header, folder / path.name)
    return folder / path.name


def _write_itk(img: sitk.Image, path: str | Path, compress: bool) -> None:
    """Write atomically; .mhd (header + data file) goes through a temporary folder. Temporary names
    carry the extension in lower case (see ``create_temporary``), so ``X.MHA`` is a real MetaImage."""
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")) and not has_extension(path, (".nii", ".nii.gz")):
        raise SkullVAEError("cannot write: NIfTI names end in .nii(.gz) or .NII(.GZ), never mixed case", path)
    try:
        if path.suffix.lower() == ".mhd" and is_temporary_name(path.parent.name, folder=True):
            _write_mhd(img, path, path.parent, compress)  # already in a locked temporary folder (outputs.py)
        elif path.suffix.lower() == ".mhd":
            tmp_dir, fd = make_temporary_folder(path)
            try:
                header = _write_mhd(img, path, tmp_dir, compress)
                for part in sorted(tmp_dir.iterdir(), key=lambda p: p == header):  # data first, header last
                    os.replace(part, path.parent / part.name)
            except OSError as exc:
                raise write_error(exc, path) from None
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                os.close(fd)
        else:
            with atomic_path(path) as tmp:
                if path.name.lower().endswith(".nrrd"):
                    write_itk_nrrd(img, tmp, compress=compress)
                else:
                    sitk.WriteImage(img, str(tmp), compress)
    except RuntimeError as exc:
        raise SkullVAEError(f"cannot write image: {str(exc).strip().splitlines()[-1]}", path) from None


def write_mask(image: SkullImage, path: str | Path, compress: bool = True) -> None:
    """Write ``image.mask`` as uint8 0/1 on its exact geometry (atomic; gzip by default)."""
    _write_itk(image.to_sitk(pixel_type=np.uint8), path, compress)


def write_scalar(like: SkullImage, array: np.ndarray, path: str | Path, compress: bool = True) -> None:
    """Write a float32 map (I, J, K) (e.g. probabilities, uncertainty) on ``like``'s geometry."""
    _write_itk(like.to_sitk(np.asarray(array), pixel_type=np.float32), path, compress)
