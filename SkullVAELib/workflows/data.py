"""Data-set workflows: phantom cohorts, defect sets and the model-grid cache.

Every function writes the data-set layout of :mod:`SkullVAELib.data.layout`
(``LABEL_FOLDERS``, ``IMPLANT_FOLDERS``, ``EXTENSIONS``) and returns what it did.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.config import DEFAULT_RESAMPLE, DEFECTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.data.layout import EXTENSIONS, IMPLANT_FOLDERS, LABEL_FOLDERS, split_case_name
from SkullVAELib.io.image import SkullImage


@dataclass
class DefectSet:
    """What :func:`make_defect_set` wrote: ``cases`` files of one ``kind`` into two folders."""

    kind: str
    cases: int
    mean_implant_fraction: float  # implant voxels / complete-skull voxels, mean over cases
    defective_dir: Path
    implant_dir: Path


@dataclass
class PhantomSet:
    """What :func:`make_phantom_set` wrote under ``out``."""

    out: Path
    n: int
    bone_cm3: list[float] = field(default_factory=list)  # bone volume per phantom (cm³)
    folders: list[str] = field(default_factory=list)  # folder names written, in layout order


PHANTOM_ID = re.compile(r"^phantom_\d{3,}$")  # the case ids phantom_file_name gives
# Peak bytes per grid voxel of painting, writing and cutting the defects of one phantom beyond the
# limits' 16 (measured 28-30 B/voxel at 256x256x192 and 192x192x144, defects included).
PHANTOM_BYTES_PER_VOXEL = 14


def list_complete_skulls(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` (or of ``folder/complete_skull/`` when that exists), sorted.

    Two files of one case id (``000.nrrd`` and ``000.nii.gz``) are refused, as the data set reader
    refuses them: one would be dropped unseen, or both cut with the case's one seed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SkullVAEError("not a folder of complete skulls", folder)
    if (folder / LABEL_FOLDERS["complete"]).is_dir():
        folder = folder / LABEL_FOLDERS["complete"]
    files = sorted(p for p in folder.iterdir() if p.is_file() and split_case_name(p.name) is not None)
    if not files:
        raise SkullVAEError(f"no skull images ({', '.join(EXTENSIONS)}) in this folder", folder)
    seen: dict[str, Path] = {}
    for path in files:
        case_id = split_case_name(path.name)[0]
        if case_id in seen:
            raise SkullVAEError(f"two files for case {case_id!r}: {seen[case_id].name} and {path.name}", folder)
        seen[case_id] = path
    return files


def write_defect_pair(
    complete: SkullImage,
    file_name: str,
    kind: str,
    out: str | os.PathLike,
    seed: int,
    style: str = "skullfix",
    paths: tuple[Path, Path] | None = None,
) -> tuple[SkullImage, SkullImage]:
    """Cut one ``kind`` defect (per-case seed from ``seed`` and the case id) and write both halves
    (to ``out``'s layout, or to ``paths`` = (defective, implant), e.g. an output transaction's)."""
    from SkullVAELib.data.defects import case_seed, cranial_defect, facial_defect
    from SkullVAELib.io.image import write_mask

    if kind not in DEFECTS:
        raise SkullVAEError(f"defect kind must be one of {', '.join(DEFECTS)}, got {kind!r}")
    split = split_case_name(file_name)
    if split is None:
        raise SkullVAEError(f"not an image file name ({', '.join(EXTENSIONS)})", file_name)
    per_case = case_seed(seed, split[0])
    if kind == "cranial":
        defective, implant = cranial_defect(complete, per_case, style=style)
    else:
        defective, implant = facial_defect(complete, per_case)
    if paths is None:
        paths = (Path(out) / LABEL_FOLDERS[kind] / file_name, Path(out) / IMPLANT_FOLDERS[kind] / file_name)
    write_mask(defective, paths[0])
    write_mask(implant, paths[1])
    return defective, implant


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**64:
        raise SkullVAEError(f"--seed must be an integer in 0..2**64-1, got {seed}")


def make_defect_set(
    complete: str | os.PathLike,
    kind: str,
    out: str | os.PathLike,
    seed: int = 0,
    style: str = "skullfix",
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> DefectSet:
    """Cut a ``kind`` defect out of every complete skull of ``complete`` into the data set ``out``.

    Same file names and exact geometry as the inputs; each case's seed comes from ``seed`` and
    its id, so the result does not depend on the order or on the other cases. Existing files
    are not replaced unless ``overwrite``; every case is written under a temporary name and all
    are renamed at the end, so a bad input anywhere leaves nothing written.
    """
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.outputs import OutputPlan

    _check_seed(seed)
    if kind not in DEFECTS:
        raise SkullVAEError(f"defect kind must be one of {', '.join(DEFECTS)}, got {kind!r}")
    files = list_complete_skulls(complete)
    out = Path(out)
    plan = OutputPlan(inputs=files, overwrite=overwrite, max_new_folders=2)  # OUT and OUT/defective_skull
    targets = [
        (plan.add(out / LABEL_FOLDERS[kind] / f.name, "--out"), plan.add(out / IMPLANT_FOLDERS[kind] / f.name, "--out"))
        for f in files
    ]
    progress = progress or no_progress
    total_fraction = 0.0
    with plan.transaction() as tx:
        for n, (path, (defective_path, implant_path)) in enumerate(zip(files, targets, strict=True)):
            progress("make-defects", n / len(files), path.name)
            skull = read_skull(path)
            paths = (tx.path(defective_path), tx.path(implant_path))
            _, implant = write_defect_pair(skull, path.name, kind, out, seed, style, paths=paths)
            total_fraction += implant.mask.sum() / max(int(skull.mask.sum()), 1)
    progress("make-defects", 1.0, f"{len(files)} cases")
    return DefectSet(
        kind, len(files), total_fraction / len(files), out / LABEL_FOLDERS[kind], out / IMPLANT_FOLDERS[kind]
    )


def make_phantom_set(
    n: int,
    out: str | os.PathLike,
    seed: int = 0,
    shape: Sequence[int] = (128, 128, 96),
    spacing: Sequence[float] | None = None,
    with_defects: bool = False,
    style: str = "skullfix",
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
) -> PhantomSet:
    """Write ``n`` procedural phantoms as ``out/complete_skull/phantom_NNN.nrrd``; with
    ``with_defects`` also a cranial and a facial defect (and implant) of each.

    A data set already in ``out`` (files in any of its folders) is refused unless ``overwrite``;
    then every ``phantom_NNN`` file there is replaced or, when this cohort has no such file
    (fewer phantoms, no defects), removed, so no phantom of an earlier cohort stays beside the
    new ones; other files are left alone. All files are written under temporary names and
    renamed at the end: an error anywhere leaves ``out`` as it was. A ``shape`` (I, J, K voxels)
    over the voxel or memory limit (:mod:`SkullVAELib.core.limits`) is refused before any work.
    """
    from SkullVAELib.core.limits import check_volume
    from SkullVAELib.data.phantoms import make_phantom, phantom_seeds
    from SkullVAELib.io.image import write_mask
    from SkullVAELib.io.outputs import OutputPlan, check_output_folder

    if n < 1:
        raise SkullVAEError(f"--n must be at least 1, got {n}")
    _check_seed(seed)
    check_volume(tuple(shape), PHANTOM_BYTES_PER_VOXEL, what="phantom grid")  # before any voxel is allocated
    out = check_output_folder(out, "--out")  # at most 2 new folder levels
    layout = [LABEL_FOLDERS["complete"]] + [f for kind in DEFECTS for f in (LABEL_FOLDERS[kind], IMPLANT_FOLDERS[kind])]
    if not overwrite:
        held = [f"{name}/" for name in layout if _has_visible_files(out / name)]
        if held:
            raise SkullVAEError(
                f"--out already holds a data set ({', '.join(held)}); give --overwrite to replace it", out
            )
    folders = layout if with_defects else layout[:1]
    names = [phantom_file_name(k) for k in range(n)]
    plan = OutputPlan(overwrite=overwrite, max_new_folders=3)  # the new levels of out + its data-set folder
    targets = {(folder, name): plan.add(out / folder / name, "--out") for folder in folders for name in names}
    for folder in layout:  # planned, never written: the transaction removes them
        for stale in _phantom_files(out / folder):
            if (folder, stale.name) not in targets:
                plan.add(stale, "--out")
    progress = progress or no_progress
    result = PhantomSet(out, n, folders=folders)
    with plan.transaction() as tx:
        for k, subject_seed in enumerate(phantom_seeds(n, seed)):
            name = names[k]
            progress("phantoms", k / n, name)
            image = make_phantom(subject_seed, tuple(shape), None if spacing is None else tuple(spacing))
            write_mask(image, tx.path(targets[(layout[0], name)]))
            result.bone_cm3.append(float(image.mask.sum() * image.voxel_volume_mm3 / 1000.0))
            if with_defects:
                for kind in DEFECTS:
                    pair = (targets[(LABEL_FOLDERS[kind], name)], targets[(IMPLANT_FOLDERS[kind], name)])
                    write_defect_pair(image, name, kind, out, seed, style, paths=(tx.path(pair[0]), tx.path(pair[1])))
    progress("phantoms", 1.0, f"{n} phantoms")
    return result


def _has_visible_files(folder: Path) -> bool:
    """True when ``folder`` is a folder with an entry not hidden (hidden: stale temporaries, .DS_Store)."""
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


def _phantom_files(folder: Path) -> list[Path]:
    """The ``phantom_NNN`` image files of ``folder`` (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (split := split_case_name(p.name)) is not None and PHANTOM_ID.match(split[0])
    )


def phantom_file_name(index: int) -> str:
    """``phantom_007.nrrd``: the file name of the phantom ``index`` of a cohort."""
    return f"phantom_{index:03d}.nrrd"


def cache_data_set(
    data: Sequence[str | os.PathLike],
    grid: Sequence[int],
    cache_dir: str | os.PathLike | None = None,
    resample: str = DEFAULT_RESAMPLE,
    workers: int = 1,
    progress: ProgressCallback | None = None,
):
    """Map every case of the data folders to the model grid once (content-hashed cache).

    Returns ``(CachedDataset, {label: count}, cache folder)``.
    """
    from SkullVAELib.data.dataset import build_cache, default_cache_dir, discover_cases

    cases = discover_cases([Path(d) for d in data])
    cached = build_cache(
        cases, tuple(grid), cache_dir=cache_dir, mode=resample, progress=progress, workers=max(1, workers)
    )
    where = Path(cache_dir) if cache_dir else default_cache_dir()
    return cached, dict(Counter(cached.labels)), where
