"""Data set discovery and the on-disk cache of model-grid volumes.

A data set is one folder or several merged by case id (e.g. the read-only SkullFix folder
plus a folder of generated facial defects), in the layout of :mod:`SkullVAELib.data.layout`.

Any ITK format (.nrrd, .nii, .nii.gz, .mha, .mhd). Every defective case needs its complete
partner (same ID) in one of the roots.

The cache keeps each volume's model-grid occupancy as uint8 (×255) ``.npy``, keyed by the
SHA-256 of the file's bytes + grid + mode + cache format version, so training never
re-reads or re-resamples the originals.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.config import check_resample
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_volume
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.data.case_ids import parse_id_spec
from SkullVAELib.data.layout import EXTENSIONS, IMPLANT_FOLDERS, LABEL_FOLDERS, LABELS, split_case_name
from SkullVAELib.io.inputs import data_files

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Case:
    """One volume of the data set.

    Attributes:
        case_id: pairs a defective skull with its complete one (the file name without extension).
        label: "complete", "cranial" or "facial".
        path: the skull file.
        implant_path: the implant file for a defective case, when present (evaluation only).
    """

    case_id: str
    label: str
    path: Path
    implant_path: Path | None = None


def _case_id(file: Path) -> str | None:
    split = split_case_name(file.name)
    return split[0] if split is not None and file.is_file() else None


def _files_by_id(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            case_id = _case_id(file)
            if case_id is None:
                continue
            if case_id in found:
                raise SkullVAEError(f"two files for case {case_id!r}: {found[case_id].name} and {file.name}", folder)
            found[case_id] = file
    return found


def discover_cases(roots: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Case]:
    """All cases under one or several data folders, sorted by label then id.

    Raises SkullVAEError naming the folder or file: missing folder, a folder with no cases,
    the same case in two roots, or a defective case whose complete partner is missing.
    """
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not roots:
        raise SkullVAEError("no data folder given")
    found: dict[tuple[str, str], Case] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise SkullVAEError("data folder not found", root)
        count = 0
        for label, folder in LABEL_FOLDERS.items():
            implants = _files_by_id(root / IMPLANT_FOLDERS[label]) if label in IMPLANT_FOLDERS else {}
            for case_id, path in _files_by_id(root / folder).items():
                key = (label, case_id)
                if key in found and found[key].path.resolve() != path.resolve():
                    raise SkullVAEError(f"case {label}/{case_id} is also in {found[key].path}", path)
                found[key] = Case(case_id, label, path, implants.get(case_id))
                count += 1
        if count == 0:
            raise SkullVAEError(
                "no cases found: expected "
                + ", ".join(f"{f}/" for f in LABEL_FOLDERS.values())
                + f" holding {', '.join(EXTENSIONS)} files",
                root,
            )
    complete_ids = {case_id for label, case_id in found if label == "complete"}
    for (label, case_id), case in sorted(found.items()):
        if label != "complete" and case_id not in complete_ids:
            raise SkullVAEError(
                f"defective case {case_id!r} has no complete partner {LABEL_FOLDERS['complete']}/{case_id}.* in "
                + ", ".join(map(str, roots)),
                case.path,
            )
    return sorted(found.values(), key=lambda c: (LABELS.index(c.label), c.case_id))


def split_by_case_id(cases, test_ids: Iterable[str]):
    """Split by skull id so no skull is in both parts (its complete and defective versions go together).

    Args:
        cases: list[Case] or a CachedDataset.
        test_ids: ids of the held-out skulls.

    Returns:
        (train, test) of the same type as ``cases``.
    """
    test_ids = {str(t) for t in test_ids}
    ids = cases.case_ids if isinstance(cases, CachedDataset) else [c.case_id for c in cases]
    unknown = sorted(test_ids - set(ids))
    if unknown:
        raise SkullVAEError(f"test case ids not in the data set: {', '.join(unknown)}")
    test = [i for i, case_id in enumerate(ids) if case_id in test_ids]
    train = [i for i, case_id in enumerate(ids) if case_id not in test_ids]
    if isinstance(cases, CachedDataset):
        return cases.subset(train), cases.subset(test)
    return [cases[i] for i in train], [cases[i] for i in test]


# --- the cache -------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$SKULLVAE_CACHE`` or ``~/.cache/skullvae``."""
    return Path(os.environ.get("SKULLVAE_CACHE") or Path.home() / ".cache" / "skullvae")


def file_content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes (for .mhd, header plus its data file).

    Only regular files are read (a FIFO or an .mhd naming ``/dev/zero`` is refused, see
    :func:`SkullVAELib.io.inputs.data_files`), and never more bytes than the file's size when opened.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = data_files(path)
    try:
        for file in files:
            with open(file, "rb") as stream:
                left = os.fstat(stream.fileno()).st_size
                while left > 0:
                    block = stream.read(min(1 << 20, left))
                    if not block:
                        break
                    digest.update(block)
                    left -= len(block)
    except OSError as exc:
        raise SkullVAEError(f"cannot read file: {exc.strerror}", exc.filename or path) from None
    return digest.hexdigest()


def _manifest_hash(entries: Sequence[tuple[str, str, str]]) -> str:
    text = "\n".join(f"{label}/{case_id}:{content}" for label, case_id, content in entries)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(eq=False)
class CachedDataset:
    """Model-grid volumes of a data set, in memory.

    Attributes:
        volumes: float16 tensor (N, 1, X, Y, Z), occupancy in [0, 1].
        labels: N labels ("complete", "cranial", "facial").
        case_ids: N case ids.
        content_hashes: N SHA-256 of the source files.
        manifest_hash: SHA-256 over the (label, id, content hash) list, recorded in model bundles.
        grid: (X, Y, Z); mode: "area" or "nearest".
    """

    volumes: torch.Tensor
    labels: list[str]
    case_ids: list[str]
    content_hashes: list[str]
    grid: tuple[int, int, int]
    mode: str = "area"

    @property
    def manifest_hash(self) -> str:
        return _manifest_hash(list(zip(self.labels, self.case_ids, self.content_hashes, strict=True)))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> CachedDataset:
        """The rows ``indices`` (a new dataset sharing no storage with this one's order)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        pick = index.tolist()
        return CachedDataset(
            self.volumes.index_select(0, index),
            [self.labels[i] for i in pick],
            [self.case_ids[i] for i in pick],
            [self.content_hashes[i] for i in pick],
            self.grid,
            self.mode,
        )


def _cache_file(cache_dir: Path, content_hash: str, grid: tuple[int, int, int], mode: str) -> Path:
    key = hashlib.sha256(f"v{CACHE_FORMAT_VERSION}|{content_hash}|{grid}|{mode}".encode()).hexdigest()[:32]
    return cache_dir / f"v{CACHE_FORMAT_VERSION}" / f"{'x'.join(map(str, grid))}-{mode}" / f"{key}.npy"


def _compute_entry(path: Path, target: Path, grid: tuple[int, int, int], mode: str) -> None:
    """Read one skull, map it to the grid and store uint8 occupancy ×255 at ``target`` (atomic)."""
    from SkullVAELib.data.grid import to_model_grid
    from SkullVAELib.io.image import read_skull

    occupancy = to_model_grid(read_skull(path), grid, mode)
    quantized = np.rint(occupancy * 255.0).astype(np.uint8)
    with atomic_path(target) as tmp:
        np.save(tmp, quantized, allow_pickle=False)


def _worker_compute(args: tuple[Path, Path, tuple[int, int, int], str]) -> None:
    torch.set_num_threads(1)
    _compute_entry(*args)


def _load_entry(target: Path, grid: tuple[int, int, int]) -> np.ndarray | None:
    try:
        array = np.load(target, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return array if array.shape == grid and array.dtype == np.uint8 else None


def build_cache(
    cases: Sequence[Case],
    grid: Sequence[int],
    cache_dir: str | os.PathLike | None = None,
    mode: str = "area",
    progress: ProgressCallback | None = None,
    workers: int = 1,
) -> CachedDataset:
    """Model-grid volumes of ``cases``, computed once and then loaded from ``cache_dir``.

    Args:
        cases: from :func:`discover_cases`.
        grid: (X, Y, Z) model grid.
        cache_dir: default ``$SKULLVAE_CACHE`` or ``~/.cache/skullvae``.
        mode: "area" (soft occupancy) or "nearest" (the paper's).
        progress: ``progress("cache", fraction, message)``.
        workers: processes computing missing volumes (1 = in this process).

    Returns:
        CachedDataset with float16 volumes (N, 1, X, Y, Z).
    """
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3 or min(grid) <= 0:
        raise SkullVAEError(f"grid must be three positive integers, got {grid}")
    check_resample(mode)
    if not cases:
        raise SkullVAEError("no cases to cache")
    progress = progress or no_progress
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    n = len(cases)
    # One model-grid volume must fit the limits (a 2048³ grid is refused before anything is allocated).
    # Deliberately not the whole cache (N float16 volumes): training needs all of it, and SkullFix's 240
    # at 256×256×128 take 4.03 GB, over the default 4 GB limit, which would refuse the paper's own data.
    check_volume(grid, 2, what="model-grid volume")

    hashes = []
    for i, case in enumerate(cases):
        progress("hash", i / n, f"{case.label}/{case.case_id}")
        hashes.append(file_content_hash(case.path))
    progress("hash", 1.0, f"{n} files")
    targets = [_cache_file(cache_dir, h, grid, mode) for h in hashes]  # type: ignore[arg-type]

    missing = [i for i, t in enumerate(targets) if not t.is_file()]
    jobs = [(cases[i].path, targets[i], grid, mode) for i in missing]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done, _ in enumerate(pool.map(_worker_compute, jobs), 1):
                progress("cache", done / len(jobs), f"{done}/{len(jobs)} computed")
    else:
        for done, job in enumerate(jobs, 1):
            _compute_entry(*job)
            progress("cache", done / len(jobs), f"{cases[missing[done - 1]].label}/{cases[missing[done - 1]].case_id}")

    volumes = torch.empty((n, 1, *grid), dtype=torch.float16)
    for i, target in enumerate(targets):
        array = _load_entry(target, grid)  # type: ignore[arg-type]
        if array is None:  # damaged entry: recompute it
            _compute_entry(cases[i].path, target, grid, mode)  # type: ignore[arg-type]
            array = _load_entry(target, grid)  # type: ignore[arg-type]
        volumes[i, 0] = torch.from_numpy(array).to(torch.float16) / 255.0
        progress("load", (i + 1) / n, f"{cases[i].label}/{cases[i].case_id}")
    return CachedDataset(volumes, [c.label for c in cases], [c.case_id for c in cases], hashes, grid, mode)  # type: ignore[arg-type]


def select_cases(cases: Sequence[Case], spec: str | Sequence[str] | None, option: str = "--train-ids") -> list[Case]:
    """The cases whose id ``spec`` names (see `parse_id_spec`); all of them when ``spec`` is None.

    Raises SkullVAEError when an id is not in the data or nothing is left.
    """
    ids = parse_id_spec(spec)
    if ids is not None:
        missing = [i for i in ids if i not in {c.case_id for c in cases}]
        if missing:
            raise SkullVAEError(f"{option} names cases not in the data: {', '.join(missing[:5])}")
        wanted = set(ids)
        cases = [c for c in cases if c.case_id in wanted]
    if not cases:
        raise SkullVAEError("no cases found")
    return list(cases)
