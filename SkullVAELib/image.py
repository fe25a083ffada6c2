"""`SkullImage`: a boolean skull mask with its physical geometry.

Array order: ``mask[i, j, k]`` is indexed like ITK/NRRD voxel indices (x fastest in the
file), shape ``(I, J, K)``; the model grid uses the same order (e.g. 256×256×128).
Geometry is kept exactly as ITK reports it (LPS physical space, millimetres):
``origin`` (3,), ``spacing`` (3,), ``direction`` (3, 3) whose column ``c`` is the
physical direction of index axis ``c``. Conversion to Slicer's RAS is left to Slicer's
storage nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk


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
        return SkullImage(mask, self.origin.copy(), self.spacing.copy(), self.direction.copy(), {**self.metadata, **metadata})

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

    # --- SimpleITK bridges (array order: sitk arrays are (K, J, I)) ---------------
    def to_sitk(self, array: np.ndarray | None = None, pixel_type=np.uint8) -> sitk.Image:
        """An ITK image of ``array`` (default: the mask) on this geometry."""
        data = self.mask if array is None else np.asarray(array)
        if data.shape != self.mask.shape:
            raise ValueError(f"array shape {data.shape} != image shape {self.mask.shape}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(data.astype(pixel_type, copy=False).transpose(2, 1, 0)))
        img.SetOrigin(tuple(float(v) for v in self.origin))
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

    @classmethod
    def from_sitk_mask(cls, img: sitk.Image, mask: np.ndarray | None = None, **metadata) -> SkullImage:
        """Wrap an ITK image (nonzero = bone unless ``mask`` is given, in (I, J, K) order)."""
        origin, spacing, direction = cls.geometry_from_sitk(img)
        if mask is None:
            mask = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0) != 0
        return cls(mask, origin, spacing, direction, dict(metadata))
