"""The header of an input that is no image file (a DICOM series' folder, a surface): the grid it is read onto.

The input checks (``io.inputs``, a batch's memory estimate) read an image file's header through SimpleITK's
``ImageFileReader`` (size, spacing, origin, direction, pixel type) before any voxel is read. :class:`GridHeader`
answers the same questions for an input whose grid is built here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GridHeader:
    """The grid an input is read onto (duck-types the parts of SimpleITK's ``ImageFileReader`` the input checks use).

    Attributes:
        size: voxels along i, j, k.
        spacing: mm along i, j, k.
        origin: LPS mm of voxel (0, 0, 0).
        direction: 9 numbers, row-major (column c = the direction of index axis c).
        pixel_id: the SimpleITK pixel type of the voxels read.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    pixel_id: int

    def GetSize(self) -> tuple[int, int, int]:  # noqa: N802 - SimpleITK's reader's name
        return self.size

    def GetSpacing(self) -> tuple[float, float, float]:  # noqa: N802
        return self.spacing

    def GetOrigin(self) -> tuple[float, float, float]:  # noqa: N802
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: N802
        return self.direction

    def GetPixelID(self) -> int:  # noqa: N802
        return self.pixel_id

    def GetDimension(self) -> int:  # noqa: N802
        return 3

    def GetNumberOfComponents(self) -> int:  # noqa: N802
        return 1
