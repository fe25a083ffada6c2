"""Data set discovery (several roots merged by id), the model-grid cache, splits and `skullvae cache`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data import dataset as dataset_module
from SkullVAELib.data.dataset import CachedDataset, build_cache, discover_cases, file_content_hash, split_by_case_id
from SkullVAELib.data.grid import to_model_grid
from SkullVAELib.io.image import SkullImage, read_skull, write_mask

GRID = (8, 8, 6)


def _skull(seed: int, shape=(20, 18, 16)) -> SkullImage:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0)) * (1.0 + 0.05 * seed)
    return SkullImage((r > 0.5) & (r < 0.8), origin=(seed, 0.0, 0.0), spacing=(1.0, 1.1, 1.2))


def _make_root(root, ids, folders=("complete_skull", "defective_skull", "implant"), ext="nrrd"):
    for case_id in ids:
        skull = _skull(int(case_id))
        for folder in folders:
            mask = skull.mask.copy()
            if folder in ("defective_skull", "facial_defective_skull"):
                mask[:, :, 12:] = False
            elif folder in ("implant", "facial_implant"):
                mask[:, :, :12] = False
            write_mask(skull.with_mask(mask), root / folder / f"{case_id}.{ext}")
    return root


@pytest.fixture
def two_roots(tmp_path):
    skullfix_like = _make_root(tmp_path / "skullfix", ["000", "001", "002"])
    facial = _make_root(tmp_path / "facial", ["000", "002"], ("facial_defective_skull", "facial_implant"), ext="nii.gz")
    return skullfix_like, facial


def test_discover_merges_roots(two_roots):
    cases = discover_cases(list(two_roots))
    assert [(c.label, c.case_id) for c in cases] == [
        ("complete", "000"), ("complete", "001"), ("complete", "002"),
        ("cranial", "000"), ("cranial", "001"), ("cranial", "002"),
        ("facial", "000"), ("facial", "002"),
    ]  # fmt: skip
    assert cases[0].implant_path is None
    assert cases[3].implant_path.name == "000.nrrd" and cases[3].implant_path.parent.name == "implant"
    assert cases[6].path.name == "000.nii.gz" and cases[6].implant_path.parent.name == "facial_implant"
    assert discover_cases(two_roots[0]) == cases[:6]  # one root as a plain path


def test_folder_with_no_cases(tmp_path):
    (tmp_path / "complete_skull").mkdir()
    (tmp_path / "complete_skull" / "notes.txt").write_text("x")
    with pytest.raises(SkullVAEError, match="no cases found") as err:
        discover_cases(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(SkullVAEError, match="not found"):
        discover_cases(tmp_path / "nowhere")


def test_missing_complete_partner(tmp_path):
    root = _make_root(tmp_path / "d", ["000"])
    _make_root(root, ["005"], ("defective_skull",))
    with pytest.raises(SkullVAEError, match="no complete partner") as err:
        discover_cases(root)
    assert str(root / "defective_skull" / "005.nrrd") in str(err.value)


def test_same_case_in_two_roots(tmp_path):
    a = _make_root(tmp_path / "a", ["000"], ("complete_skull",))
    b = _make_root(tmp_path / "b", ["000"], ("complete_skull",))
    with pytest.raises(SkullVAEError, match="also in"):
        discover_cases([a, b])
    assert len(discover_cases([a, a])) == 1  # the same folder twice is harmless


def test_build_cache_then_load_without_recomputing(two_roots, tmp_path, monkeypatch):
    cases = discover_cases(list(two_roots))
    calls = []
    data = build_cache(cases, GRID, cache_dir=tmp_path / "cache", progress=lambda s, f, m="": calls.append((s, f)))
    assert data.volumes.shape == (8, 1, *GRID) and data.volumes.dtype == torch.float16
    assert data.labels[:3] == ["complete"] * 3 and data.case_ids[-1] == "002"
    assert calls[-1] == ("load", 1.0)
    for i in (0, 4, 7):
        expected = to_model_grid(read_skull(cases[i].path), GRID)
        np.testing.assert_allclose(data.volumes[i, 0].float().numpy(), expected, atol=1 / 255 + 1e-3)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 8

    def forbidden(*args):
        raise AssertionError("cache miss: recomputed")

    monkeypatch.setattr(dataset_module, "_compute_entry", forbidden)
    again = build_cache(cases, GRID, cache_dir=tmp_path / "cache")
    assert torch.equal(again.volumes, data.volumes)
    assert again.manifest_hash == data.manifest_hash


def test_cache_key_follows_content_grid_and_mode(two_roots, tmp_path, monkeypatch):
    monkeypatch.setenv("SKULLVAE_CACHE", str(tmp_path / "env-cache"))
    cases = discover_cases(two_roots[0])[:2]
    first = build_cache(cases, GRID)
    assert len(list((tmp_path / "env-cache").rglob("*.npy"))) == 2
    build_cache(cases, GRID, mode="nearest")
    build_cache(cases, (4, 4, 4))
    assert len(list((tmp_path / "env-cache").rglob("*.npy"))) == 6
    old_hash = file_content_hash(cases[0].path)
    write_mask(_skull(9), cases[0].path)  # new content under the same name
    assert file_content_hash(cases[0].path) != old_hash
    changed = build_cache(cases, GRID)
    assert changed.manifest_hash != first.manifest_hash
    assert not torch.equal(changed.volumes[0], first.volumes[0])


@pytest.mark.slow  # spawns two processes that import torch
def test_parallel_build_matches_serial(two_roots, tmp_path):
    cases = discover_cases(two_roots[0])[:3]
    serial = build_cache(cases, GRID, cache_dir=tmp_path / "serial")
    parallel = build_cache(cases, GRID, cache_dir=tmp_path / "parallel", workers=2)
    assert torch.equal(serial.volumes, parallel.volumes)


def test_unreadable_case_file_names_the_file(tmp_path):
    root = _make_root(tmp_path / "d", ["000"], ("complete_skull",))
    (root / "complete_skull" / "001.nrrd").write_bytes(b"not an image")
    with pytest.raises(SkullVAEError, match="cannot read") as err:
        build_cache(discover_cases(root), GRID, cache_dir=tmp_path / "cache")
    assert "001.nrrd" in str(err.value)
    assert list((tmp_path / "cache").rglob("*.tmp*")) == []


def test_subset_and_split_by_case_id(two_roots, tmp_path):
    cases = discover_cases(list(two_roots))
    train, test = split_by_case_id(cases, ["002"])
    assert {c.case_id for c in test} == {"002"} and len(test) == 3
    assert "002" not in {c.case_id for c in train} and len(train) == 5
    data = build_cache(cases, GRID, cache_dir=tmp_path / "cache")
    dtrain, dtest = split_by_case_id(data, ["002"])
    assert isinstance(dtest, CachedDataset) and dtest.case_ids == ["002"] * 3
    assert dtest.labels == ["complete", "cranial", "facial"]
    assert torch.equal(dtest.volumes[0], data.volumes[2])
    assert dtrain.manifest_hash != data.manifest_hash and len(dtrain) == 5
    with pytest.raises(SkullVAEError, match="not in the data set"):
        split_by_case_id(cases, ["999"])


def test_cli_cache(two_roots, tmp_path, capsys):
    rc = main(["cache", "--data", *map(str, two_roots), "--grid", "8,8,6", "--cache-dir", str(tmp_path / "c"),
               "--progress", "none"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "cached 8 volumes" in out and "manifest hash" in out


def test_cli_cache_empty_folder_exits_2(tmp_path, capsys):
    rc = main(["cache", "--data", str(tmp_path), "--grid", "8,8,6", "--cache-dir", str(tmp_path / "c")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("skullvae cache: error:") and str(tmp_path) in err and "no cases found" in err


def test_select_cases_by_id_spec():
    from SkullVAELib.data.dataset import Case, select_cases

    cases = [Case(f"{i:03d}", "complete", Path(f"/x/{i:03d}.nrrd")) for i in range(5)]
    assert [c.case_id for c in select_cases(cases, "001-002,004")] == ["001", "002", "004"]
    assert len(select_cases(cases, None)) == 5
    with pytest.raises(SkullVAEError, match="--train-ids names cases not in the data: 009"):
        select_cases(cases, "009")
    with pytest.raises(SkullVAEError, match="no cases"):
        select_cases([], None)
