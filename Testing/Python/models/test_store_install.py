"""Installing into the model cache: two installs of one name at once, and a bundle folder that cannot be copied.

- Two installs of ``tiny`` without ``overwrite`` that both pass the "already installed?" check (held apart
  just before the rename) must not both succeed: the second is refused in one line, the first kept.
- ``models install FOLDER`` whose folder holds a dangling link (or a FIFO) is one line naming that file,
  exit 2, with nothing left in the cache (it was shutil.Error's traceback).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.models import store

# fixture tiny_model: Testing/Python/conftest.py


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SKULLVAE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SKULLVAE_REGISTRY", raising=False)
    return tmp_path / "home"


def test_two_installs_of_one_name_at_once_do_not_both_succeed(home, tiny_model, monkeypatch):
    rename = store.replace_folder
    both_checked = threading.Barrier(2)

    def rename_when_both_checked(staged: Path, final: Path) -> None:
        try:  # both installs have passed the "already installed?" check, or the other one waits on a lock
            both_checked.wait(timeout=2.0)
        except threading.BrokenBarrierError:
            pass
        rename(staged, final)

    monkeypatch.setattr(store, "replace_folder", rename_when_both_checked)
    results: list[object] = []

    def install() -> None:
        try:
            results.append(store.install_model(tiny_model, name="tiny", home=home))
        except SkullVAEError as exc:
            results.append(exc)

    threads = [threading.Thread(target=install) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    errors = [r for r in results if isinstance(r, SkullVAEError)]
    assert len(results) == 2 and len(errors) == 1, results  # one installed, the other refused
    assert "already installed" in errors[0].message and "--overwrite" in errors[0].message
    assert [m.name for m in store.installed_models(home)] == ["tiny"]
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny"]  # no staging or .old folder left


@pytest.mark.parametrize("kind", ["dangling-link", "fifo"])
def test_a_bundle_folder_with_an_uncopyable_file_is_one_line(home, tiny_model, tmp_path, capsys, kind):
    folder = tmp_path / "mine"
    folder.mkdir()
    for part in tiny_model.iterdir():
        (folder / part.name).write_bytes(part.read_bytes())
    bad = folder / "notes.md"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to(tmp_path / "moved-away.md")
    code = main(["models", "install", str(folder), "--name", "mine", "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(bad) in err[0] and "not installed" in err[0], err[0]
    assert not (home / "models" / "mine").exists()
    assert not [p for p in (home / "models").iterdir()]  # the staging folder is gone too
