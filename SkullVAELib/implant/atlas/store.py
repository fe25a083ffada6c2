"""An atlas set on disk: complete skulls at their original resolution plus registration images.

Layout of the folder (written to a temporary folder, renamed into place when complete)::

    atlas.json        {"format": "skullvae-atlas", "version": 1, "spacing_mm": 2.0,
                       "cases": [{"id": "000", "mask": "000.nrrd", "low": "000.low.nrrd"}, ...]}
    000.nrrd          uint8 mask, the complete skull on its own grid (gzip NRRD)
    000.low.nrrd      float32, the mask averaged to ≈ spacing_mm and Gaussian-smoothed (registration)

The images are skulls of the training set: an atlas set is as private as the data it was built
from (like a trained model) and is never committed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from SkullVAELib.core.atomic import make_temporary_folder, replace_folder
from SkullVAELib.core.config import ATLAS_SPACING_MM
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.io.image import SkullImage, read_skull, write_mask
from SkullVAELib.io.inputs import read_information

MANIFEST = "atlas.json"
FORMAT = "skullvae-atlas"
VERSION = 1


MIN_BLOCKS = 4  # registration blocks an axis at the least


def registration_grid(
    size: Sequence[int], spacing: Sequence[float], spacing_mm: float = ATLAS_SPACING_MM
) -> tuple[list[int], list[int]]:
    """(block factors, block counts) per axis of :func:`registration_image` for a mask of ``size``
    voxels of ``spacing`` mm: the block counts are the registration image's size."""
    factors = [max(int(round(spacing_mm / s)), 1) for s in spacing]
    return factors, [-(-int(n) // f) for n, f in zip(size, factors, strict=True)]


def registration_image(mask: sitk.Image, spacing_mm: float = ATLAS_SPACING_MM) -> sitk.Image:
    """float32 image of ``mask`` (uint8 0/1, size (I, J, K)) area-averaged over blocks of ≈
    ``spacing_mm`` (mm) and smoothed (σ = spacing / 2 mm); size ⌈(I, J, K) / factors⌉.

    The blocks cover the whole of ``mask``: it is padded with background at its high-index faces
    to whole blocks first (BinShrink alone drops a last partial block, and the registration, the
    B-spline's domain and the displacement field sampled on this grid then miss those voxels).
    Origin: the centre of the first block, as BinShrink's. SkullVAEError for a volume under ``MIN_BLOCKS``
    blocks along an axis (not a skull; SimpleITK's smoothing refuses it with a traceback).
    """
    factors, blocks = registration_grid(mask.GetSize(), mask.GetSpacing(), spacing_mm)
    if min(blocks) < MIN_BLOCKS:  # the recursive Gaussian needs 4 samples an axis; a skull spans 50 or more
        extent = ", ".join(f"{n * s:.0f}" for n, s in zip(mask.GetSize(), mask.GetSpacing(), strict=True))
        raise SkullVAEError(f"a volume of {extent} mm is too small to register (no skull: {spacing_mm:g} mm blocks)")
    short = [(-n) % f for n, f in zip(mask.GetSize(), factors, strict=True)]  # voxels to whole blocks
    padded = sitk.ConstantPad(mask, [0, 0, 0], short, 0.0) if any(short) else mask
    img = sitk.Cast(padded, sitk.sitkFloat32)
    return sitk.SmoothingRecursiveGaussian(sitk.BinShrink(img, factors), spacing_mm / 2.0)


@dataclass(frozen=True)
class AtlasEntry:
    """One complete skull of the set: its id and file names inside the folder."""

    case_id: str
    mask: str
    low: str


class AtlasSet:
    """A loaded atlas set (folder with ``atlas.json``); images are read on demand and cached."""

    def __init__(self, folder: Path, entries: list[AtlasEntry], spacing_mm: float) -> None:
        self.folder = folder
        self.entries = entries
        self.spacing_mm = spacing_mm
        self._low: dict[str, sitk.Image] = {}
        self._voxels: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.case_id for e in self.entries]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AtlasSet:
        """Read and check ``folder/atlas.json``; one-line SkullVAEError naming the file otherwise."""
        folder = Path(folder)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise SkullVAEError(f"not an atlas set (no {MANIFEST}; build one with `skullvae build-atlas`)", folder)
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SkullVAEError(f"unreadable atlas manifest ({exc.__class__.__name__})", manifest) from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise SkullVAEError(f"not a {FORMAT} manifest", manifest)
        if info.get("version") != VERSION:
            raise SkullVAEError(
                f"atlas format version {info.get('version')!r}; this SkullVAE reads {VERSION}", manifest
            )
        try:
            entries = [AtlasEntry(str(c["id"]), str(c["mask"]), str(c["low"])) for c in info["cases"]]
            spacing = float(info["spacing_mm"])
        except (KeyError, TypeError, ValueError):
            raise SkullVAEError("atlas manifest lacks cases/spacing_mm", manifest) from None
        if not entries:
            raise SkullVAEError("the atlas set has no skulls", manifest)
        for e in entries:
            for name in (e.mask, e.low):
                if Path(name).name != name or not (folder / name).is_file():
                    raise SkullVAEError(f"atlas file {name!r} named in the manifest is missing", folder)
        return cls(folder, entries, spacing)

    def low(self, case_id: str) -> sitk.Image:
        """The registration image of ``case_id`` (float32 sitk.Image, ≈ ``spacing_mm``)."""
        if case_id not in self._low:
            entry = self._entry(case_id)
            path = self.folder / entry.low
            try:
                self._low[case_id] = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
            except RuntimeError:
                raise SkullVAEError("unreadable atlas image", path) from None
        return self._low[case_id]

    def voxels(self, case_id: str, which: str = "mask") -> int:
        """The voxel count of ``case_id``'s complete skull (``which="mask"``) or registration image
        (``"low"``), from the file's header: no voxel is read (memory estimates, ``.memory``).

        0 for a header that cannot be read: reading the image itself then reports it, as before.
        """
        key = (case_id, which)
        if key not in self._voxels:
            entry = self._entry(case_id)
            try:  # the project's header reader: regular files only (a FIFO would hang a bare ITK reader)
                reader = read_information(
                    self.folder / (entry.low if which == "low" else entry.mask), verify_voxels=False
                )
            except SkullVAEError:
                return 0
            self._voxels[key] = math.prod(reader.GetSize())
        return self._voxels[key]

    def mask(self, case_id: str) -> SkullImage:
        """The complete skull of ``case_id`` at its original resolution."""
        return read_skull(self.folder / self._entry(case_id).mask, kind="binary")

    def _entry(self, case_id: str) -> AtlasEntry:
        for e in self.entries:
            if e.case_id == case_id:
                return e
        raise SkullVAEError(f"no skull {case_id!r} in the atlas set", self.folder)


def build_atlas_set(
    complete: Sequence[tuple[str, str | os.PathLike]],
    out: str | os.PathLike,
    spacing_mm: float = ATLAS_SPACING_MM,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> AtlasSet:
    """Write an atlas set of the complete skulls ``complete`` ((case id, path) pairs) to ``out``.

    The folder appears only when every skull was written; an existing ``out`` is replaced only
    with ``overwrite``, and only when it is an atlas set or empty (a model or data folder given
    by mistake is refused, not deleted). Inputs are read as binary masks (any format
    :func:`read_skull` reads).
    """
    out = Path(out)
    progress = progress or no_progress
    if not complete:
        raise SkullVAEError("no complete skulls to build an atlas set from")
    if not (spacing_mm > 0 and spacing_mm < 20):
        raise SkullVAEError(f"the atlas registration spacing must be in (0, 20) mm, got {spacing_mm}")
    ids = [str(c) for c, _ in complete]
    if len(set(ids)) != len(ids):
        raise SkullVAEError("duplicate case ids in the atlas set", out)
    if out.exists() and not (out.is_dir() and overwrite):
        what = "exists" if out.is_dir() else "exists and is not a folder"
        raise SkullVAEError(f"{what}; give --overwrite to replace the atlas set", out)
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        # --overwrite replaces the whole folder: never a model bundle or data set named by mistake
        raise SkullVAEError(f"holds files but no atlas set ({MANIFEST}); refusing to replace it", out)
    tmp, fd = make_temporary_folder(out)
    try:
        cases = []
        for n, (case_id, path) in enumerate(complete):
            progress("atlas", n / len(complete), f"skull {case_id}")
            skull = read_skull(path, kind="binary")
            mask_name, low_name = f"{case_id}.nrrd", f"{case_id}.low.nrrd"
            write_mask(skull, tmp / mask_name)
            try:  # one skull at a time, within read_skull's estimate (pixel + 16 B a voxel): ≈ 11 B measured
                low = registration_image(skull.to_sitk(), spacing_mm)
            except SkullVAEError as exc:
                raise SkullVAEError(exc.message, path) from None
            sitk.WriteImage(low, str(tmp / low_name), True)
            cases.append({"id": case_id, "mask": mask_name, "low": low_name})
        manifest = {"format": FORMAT, "version": VERSION, "spacing_mm": float(spacing_mm), "cases": cases}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)
    progress("atlas", 1.0, f"{len(cases)} skulls")
    return AtlasSet.load(out)
