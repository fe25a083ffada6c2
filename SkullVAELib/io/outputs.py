"""Output safety: check every destination of a call before work starts, write them together.

:class:`OutputPlan` collects the outputs of one call (``complete``, ``make-defects``, ...)
and refuses, before anything is computed or written:

- an output that resolves (symlinks and hard links followed) to an input of the call, to
  another output of the same call, into a protected folder (the model bundle, an atlas set) or onto a
  protected file (refiner or residual weights given on their own);
- a wrong extension (``.seg.nrrd`` for segmentations, ``.stl``, a single-file volume format
  for maps), so a file never holds another format than its name says;
- an existing file, unless overwriting is allowed (``--overwrite``);
- a destination whose folder cannot be made: more than ``max_new_folders`` missing levels,
  a parent that is a file, a read-only folder.

:meth:`OutputPlan.transaction` then hands out temporary names (atomic.py's pattern, locked
while written) and renames all outputs at the end under a lock on their folders, so two calls
writing the same outputs never leave a segmentation of one beside an STL of the other, and a
failure anywhere leaves the previous files as they were (temporaries removed, new empty
folders removed). The commit first moves every earlier file of the planned outputs aside, then
renames the new ones in: a process killed half-way (``kill -9``, a power cut) leaves some files
of the new run and none of the old, never a mix of two runs. Without ``overwrite``, an output
that another run created meanwhile is refused at the commit, under the lock. Each transaction
has a ``run_id``; asked to, it writes a run manifest (:mod:`SkullVAELib.io.runs`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from SkullVAELib.core.atomic import (
    create_temporary,
    file_mode,
    folder_lock,
    make_temporary_folder,
    refuse_special_file,
    write_error,
)
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.runs import manifest_path, manifest_text

SEGMENTATION_EXTENSIONS = (".seg.nrrd",)
STL_EXTENSIONS = (".stl",)
# single-file volume formats (.mhd writes a second data file whose name the header records)
VOLUME_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha")
PNG_EXTENSIONS = (".png",)


def has_extension(path: str | os.PathLike, extensions: Iterable[str]) -> bool:
    """Any case (written under a lower-case temporary name); NIfTI's library reads only ``.nii.gz`` or ``.NII.GZ``."""
    name = Path(path).name
    tails = [(e, name[-len(e) :]) for e in extensions if len(name) > len(e) and name[-len(e) :].lower() == e]
    return any(".nii" not in e or tail in (e, e.upper()) for e, tail in tails)


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file (links followed), else None: two names of one file share it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class _Output:
    final: Path
    option: str
    resolved: Path


class OutputPlan:
    """The checked outputs of one call; see the module docstring.

    Args:
        inputs: files the call reads; no output may be one of them (by path or by inode).
        protected: {folder or file: what it is ("model folder", "model file")}, no output in or onto one (a list: folders).
        overwrite: allow replacing existing files (complete's own outputs: yes; data sets
            and models: only with ``--overwrite``).
        max_new_folders: how many missing folder levels above an output may be created.
    """

    def __init__(
        self,
        inputs: Iterable[str | os.PathLike] = (),
        protected: Mapping[str | os.PathLike, str] | Iterable[str | os.PathLike] = (),
        overwrite: bool = True,
        max_new_folders: int = 1,
    ) -> None:
        self.inputs = [Path(p) for p in inputs]
        labels = protected if isinstance(protected, Mapping) else dict.fromkeys(protected, "model folder")
        self.protected = [(Path(p), Path(p).resolve(), what) for p, what in labels.items()]
        self.overwrite = overwrite
        self.max_new_folders = max_new_folders
        self.outputs: list[_Output] = []
        self.manifests: list[Path] = []
        self._input_ids = {i for i in map(file_identity, self.inputs) if i is not None}
        self._input_paths = {p.resolve() for p in self.inputs}

    def add(self, path: str | os.PathLike, option: str, extensions: Iterable[str] | None = None) -> Path:
        """Check one output (``option`` names it in errors, e.g. "--implant-stl") and plan it."""
        final = Path(path)
        extensions = tuple(extensions or ())
        if extensions and not has_extension(final, extensions):
            raise SkullVAEError(f"{option} must end in {' or '.join(extensions)}", final)
        if final.is_dir():
            raise SkullVAEError(f"{option} is a folder; give a file name", final)
        resolved = final.resolve()
        identity = file_identity(final)
        if resolved in self._input_paths or (identity is not None and identity in self._input_ids):
            raise SkullVAEError(f"{option} is an input of this command; refusing to overwrite it", final)
        for given, part, what in self.protected:
            if part.is_file() and (resolved == part or (identity is not None and identity == file_identity(part))):
                raise SkullVAEError(f"{option} is the {what} {given}; refusing to overwrite it", final)
            if not part.is_file() and (resolved == part or part in resolved.parents):
                raise SkullVAEError(f"{option} lies inside the {what} {given}; refusing to write there", final)
        for other in self.outputs:
            if other.resolved == resolved or (identity is not None and identity == file_identity(other.final)):
                raise SkullVAEError(f"{option} and {other.option} name the same file", final)
        if not self.overwrite and (final.exists() or final.is_symlink()):
            raise SkullVAEError("already exists; give --overwrite to replace it", final)
        refuse_special_file(final, option)
        self._check_folder(final, option)
        self.outputs.append(_Output(final, option, resolved))
        return final

    def add_run_manifest(self, output: str | os.PathLike) -> Path:
        """Plan ``<output>.run.json``: the run manifest (:mod:`SkullVAELib.io.runs`) listing every file
        this plan writes, with the transaction's ``run_id``; renamed into place after all of them."""
        path = self.add(manifest_path(output), "the run manifest")
        self.manifests.append(path)
        return path

    def _check_folder(self, final: Path, option: str) -> None:
        missing = 0
        folder = final.parent
        while not folder.exists():
            if folder.is_symlink():
                raise SkullVAEError(f"{option}: the folder is a broken symbolic link", folder)
            missing += 1
            if missing > self.max_new_folders or folder == folder.parent:
                levels = f"{self.max_new_folders} new folder level" + ("s are" if self.max_new_folders > 1 else " is")
                raise SkullVAEError(f"{option}: folder {folder} does not exist (at most {levels} made)", final)
            folder = folder.parent
        if not folder.is_dir():
            raise SkullVAEError(f"{option}: {folder} is a file, not a folder", final)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SkullVAEError(f"{option}: folder {folder} is not writable", final)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Temporary names for every planned output; all renamed at the end (see module docstring)."""
        tx = Transaction(self.outputs, overwrite=self.overwrite, manifests=self.manifests)
        try:
            tx.begin()
            yield tx
            tx.commit()
        finally:
            tx.cleanup()


class Transaction:
    """Temporary files of an :class:`OutputPlan`; use :meth:`path` to get the name to write.

    Attributes:
        run_id: a uuid4 (hex) naming this run; written into its run manifests.
    """

    def __init__(self, outputs: list[_Output], overwrite: bool = True, manifests: Iterable[Path] = ()) -> None:
        self.outputs = list(outputs)
        self.overwrite = overwrite
        self.manifests = list(manifests)
        self.run_id = uuid.uuid4().hex
        self.temps: dict[Path, Path] = {}
        self.temp_folders: dict[Path, Path] = {}  # .mhd outputs: final -> its temporary folder
        self.written: set[Path] = set()
        self._fds: list[int] = []
        self._new_folders: list[Path] = []
        self.committed = False

    def begin(self) -> None:
        for out in self.outputs:
            self._begin_one(out)

    def _begin_one(self, out: _Output) -> None:
        self._make_folders(out.final)
        name = out.final.name
        if name.lower().endswith(".mhd"):  # header + data file: written into a temporary folder
            folder, fd = make_temporary_folder(out.final)
            self._fds.append(fd)
            self.temps[out.final] = folder / name
            self.temp_folders[out.final] = folder
            return
        suffix = next((ext for ext in (".seg.nrrd", ".nii.gz", ".run.json") if name.lower().endswith(ext)), None)
        suffix = suffix if suffix is not None else (Path(name).suffix or "")
        tmp, fd = create_temporary(out.final, suffix)  # locked: live until the transaction ends
        self._fds.append(fd)
        self.temps[out.final] = tmp

    def record_run(self, output: str | os.PathLike) -> Path:
        """Also write ``<output>.run.json`` (the run manifest of every file this transaction writes, see
        :mod:`SkullVAELib.io.runs`) at the commit; returns its path. For a plan already in its
        transaction; :meth:`OutputPlan.add_run_manifest` does the same before it."""
        final = manifest_path(output)
        if final not in self.temps:
            refuse_special_file(final, "the run manifest")
            out = _Output(final, "the run manifest", final.resolve())
            self.outputs.append(out)
            self.manifests.append(final)
            self._begin_one(out)
        return final

    def _make_folders(self, final: Path) -> None:
        missing = []
        folder = final.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise write_error(exc, folder) from None
            self._new_folders.append(folder)

    def path(self, final: str | os.PathLike) -> Path:
        """The temporary to write instead of ``final`` (marks the output as written)."""
        final = Path(final)
        if final not in self.temps:
            raise KeyError(f"{final} is not a planned output")
        self.written.add(final)
        return self.temps[final]

    def _moves(self) -> list[tuple[Path, Path]]:
        """(temporary, final) renames of the written outputs, run manifests last (.mhd: data before header)."""
        moves = []
        for out in sorted(self.outputs, key=lambda o: o.final in self.manifests):
            if out.final in self.manifests:
                if any(o.final in self.written for o in self.outputs if o.final not in self.manifests):
                    moves.append((self.temps[out.final], out.final))
                continue
            if out.final not in self.written:
                continue
            if out.final in self.temp_folders:
                header = self.temps[out.final]
                parts = sorted(self.temp_folders[out.final].iterdir(), key=lambda p: p == header)
                moves += [(part, out.final.parent / part.name) for part in parts]
            else:
                moves.append((self.temps[out.final], out.final))
        return moves

    def _write_manifests(self) -> None:
        files = {
            o.final: self.temps[o.final]
            for o in self.outputs
            if o.final in self.written and o.final not in self.manifests and o.final not in self.temp_folders
        }
        for o in self.outputs:
            if o.final in self.written and o.final in self.temp_folders:
                files[o.final] = self.temps[o.final]  # an .mhd's header (its data file is named inside it)
        text = manifest_text(self.run_id, files) if files else ""
        for final in self.manifests:
            with open(self.temps[final], "w", encoding="utf-8") as stream:
                stream.write(text)

    def commit(self) -> None:
        """Under locks on the output folders: refuse outputs created meanwhile (without ``overwrite``),
        move every earlier file of the planned outputs aside, rename the new ones in (run manifests
        last), then delete the old ones. A kill at any point leaves files of one run only; an error
        puts the earlier files back."""
        try:
            self._write_manifests()
        except OSError as exc:
            raise write_error(exc, self.manifests[0]) from None
        moves = self._moves()
        finals = {out.final for out in self.outputs} | {final for _, final in moves}
        folders = sorted({final.parent.resolve() for final in finals})
        with contextlib.ExitStack() as stack:
            for folder in folders:
                stack.enter_context(folder_lock(folder))
            existing = sorted(f for f in finals if os.path.lexists(f))
            if existing and not self.overwrite:
                raise SkullVAEError(
                    "already exists: another run wrote it while this one worked; give --overwrite to replace it",
                    existing[0],
                )
            aside: list[tuple[Path, Path]] = []
            placed: list[Path] = []
            try:
                for final in existing:
                    refuse_special_file(final, "output")
                    backup = _backup_name(final)
                    os.replace(final, backup)
                    aside.append((final, backup))
                for tmp, final in moves:
                    os.chmod(tmp, file_mode())
                    os.replace(tmp, final)
                    placed.append(final)
            except OSError as exc:
                _roll_back(placed, aside)
                raise write_error(exc, (placed or [moves[0][1] if moves else existing[0]])[-1]) from None
            for _, backup in aside:
                with contextlib.suppress(OSError):
                    backup.unlink()
        self.committed = True

    def cleanup(self) -> None:
        for final, tmp in self.temps.items():
            if final in self.temp_folders:
                shutil.rmtree(self.temp_folders[final], ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                tmp.unlink()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if not self.committed:
            for folder in reversed(self._new_folders):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when still empty


def _backup_name(final: Path) -> Path:
    """A free temporary name (atomic.py's pattern, so a killed run's leftovers are removed as stale) to
    move ``final`` aside to; not made with ``create_temporary``, whose folder lock we already hold."""
    while True:
        backup = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp.old")
        if not os.path.lexists(backup):
            return backup


def _roll_back(placed: list[Path], aside: list[tuple[Path, Path]]) -> None:
    """Undo a failed commit: remove the new files already placed, put the earlier ones back."""
    for final in placed:
        with contextlib.suppress(OSError):
            final.unlink()
    for final, backup in aside:
        with contextlib.suppress(OSError):
            os.replace(backup, final)


def check_output_folder(folder: str | os.PathLike, option: str = "--out", max_new_folders: int = 2) -> Path:
    """Check, before long work starts, that files can be written into ``folder`` (made if missing,
    at most ``max_new_folders`` levels): not a file, not read-only. One-line SkullVAEError otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SkullVAEError(f"{option} exists and is not a folder", folder)
    if folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SkullVAEError(f"{option}: folder is not writable", folder)
    else:
        OutputPlan(max_new_folders=max_new_folders)._check_folder(folder / "file", option)
    return folder


MODEL_PARTS = ("config.json", "encoder.safetensors", "decoder.safetensors", "decoupled_decoder.safetensors")


def check_model_destination(
    folder: str | os.PathLike, stages: Iterable[int], resume: bool = False, overwrite: bool = False
) -> None:
    """Refuse to train into ``folder`` when that would replace a model (before any data is read).

    A folder holding a bundle or checkpoints is refused unless ``overwrite`` or ``resume``;
    stage 2 alone needs the stage-1 bundle there and is refused only when it would replace an
    existing stage-2 decoder. Also refused: a file in the way, missing folders more than one
    level up, a read-only parent.
    """
    folder = Path(folder)
    stages = tuple(stages)
    if folder.exists() and not folder.is_dir():
        raise SkullVAEError("--out exists and is not a folder", folder)
    if folder.is_dir() and not (resume or overwrite):
        if stages == (2,):
            if (folder / "decoupled_decoder.safetensors").exists():
                raise SkullVAEError(
                    "--out already holds a stage-2 (decoupled) decoder; give --overwrite to replace it, "
                    "or --resume to continue its training",
                    folder,
                )
        else:
            found = [name for name in MODEL_PARTS if (folder / name).exists()]
            if (folder / "checkpoints").is_dir() and any((folder / "checkpoints").iterdir()):
                found.append("checkpoints/")
            if found:
                raise SkullVAEError(
                    f"--out holds a model ({', '.join(found)}); give --overwrite to replace it, "
                    "or --resume to continue its training",
                    folder,
                )
    check_output_folder(folder, "--out")
