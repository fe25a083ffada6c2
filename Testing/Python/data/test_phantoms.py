"""Phantom sanity: one connected skull, plausible bone volume, SkullFix orientation, seeds, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import DEFAULT_FOV_MM, make_phantom, make_phantom_cohort
from SkullVAELib.io.image import read_skull

SMALL = (64, 64, 48)  # 3.2 mm voxels over the default field of view


def _bone_cm3(image) -> float:
    return float(image.mask.sum() * image.voxel_volume_mm3 / 1000.0)


def _physical_extent_mm(image) -> np.ndarray:
    idx = np.argwhere(image.mask)
    return (idx.max(axis=0) - idx.min(axis=0) + 1) * image.spacing


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0)


def test_default_grid_geometry(phantom):
    assert phantom.shape == (128, 128, 96)
    assert phantom.mask.dtype == bool
    np.testing.assert_array_equal(phantom.spacing, [1.6, 1.6, 1.6])
    np.testing.assert_array_equal(phantom.direction, np.eye(3))
    # centred: the physical centre of the grid is the origin of LPS space
    centre = phantom.origin + (np.array(phantom.shape) - 1) / 2 * phantom.spacing
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_connected_skull_with_plausible_volume(seed):
    image = make_phantom(seed)
    _, n = ndimage.label(image.mask, structure=np.ones((3, 3, 3)))
    assert n == 1
    assert 300.0 <= _bone_cm3(image) <= 800.0  # SkullFix skulls: ≈ 430-600 cm³
    lr, ap, si = _physical_extent_mm(image)
    assert 125 <= lr <= 165 and 160 <= ap <= 200 and 120 <= si <= 154


def test_whole_skull_inside_the_grid(phantom):
    for axis in range(3):
        profile = phantom.mask.any(axis=tuple(a for a in range(3) if a != axis))
        assert not profile[0] and not profile[-1], f"bone touches the border along axis {axis}"


def test_orientation_like_skullfix(phantom):
    """Face (lower part of the skull) at low j (anterior); vault at high k (superior)."""
    idx = np.argwhere(phantom.mask)
    k_lo, k_hi = idx[:, 2].min(), idx[:, 2].max()
    lower = idx[idx[:, 2] < k_lo + 0.25 * (k_hi - k_lo)]
    upper = idx[idx[:, 2] > k_lo + 0.75 * (k_hi - k_lo)]
    assert lower[:, 1].mean() < idx[:, 1].mean() - 10  # mandible/maxilla in front
    assert upper[:, 1].mean() == pytest.approx(idx[:, 1].mean(), abs=15)  # vault cap over the middle
    # left-right symmetric-ish
    flipped = phantom.mask[::-1]
    dice = 2 * (phantom.mask & flipped).sum() / (2 * phantom.mask.sum())
    assert dice > 0.95


def test_same_seed_same_skull_other_seed_other_skull(phantom):
    assert np.array_equal(make_phantom(0).mask, phantom.mask)
    assert not np.array_equal(make_phantom(1).mask, phantom.mask)


def test_spacing_is_physical():
    """A coarser grid over the same field of view gives the same skull in fewer voxels."""
    fine, coarse = make_phantom(4), make_phantom(4, shape=SMALL, spacing=(3.2, 3.2, 3.2))
    auto = make_phantom(4, shape=SMALL, spacing=None)
    np.testing.assert_allclose(auto.spacing, np.array(DEFAULT_FOV_MM) / np.array(SMALL))
    assert np.array_equal(auto.mask, coarse.mask)
    np.testing.assert_allclose(_physical_extent_mm(coarse), _physical_extent_mm(fine), atol=2 * 3.2)
    assert _bone_cm3(coarse) == pytest.approx(_bone_cm3(fine), rel=0.25)
    anisotropic = make_phantom(4, shape=(80, 64, 60), spacing=(2.56, 3.2, 2.56))
    np.testing.assert_allclose(_physical_extent_mm(anisotropic), _physical_extent_mm(fine), atol=2 * 3.2)


def test_cohort_is_reproducible_and_varied():
    a = make_phantom_cohort(3, seed=7, shape=SMALL, spacing=None)
    b = make_phantom_cohort(3, seed=7, shape=SMALL, spacing=None)
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].mask, a[1].mask) and not np.array_equal(a[1].mask, a[2].mask)
    volumes = [_bone_cm3(x) for x in a]
    assert max(volumes) / min(volumes) > 1.01  # subjects differ in size/thickness


@pytest.mark.parametrize(
    "kwargs",
    [dict(shape=(4, 64, 64)), dict(shape=(64, 64)), dict(spacing=(1.0, 0.0, 1.0)), dict(spacing=(1.0, np.nan, 1.0))],
)
def test_bad_grid_rejected(kwargs):
    with pytest.raises(SkullVAEError):
        make_phantom(0, **kwargs)


def test_empty_cohort_rejected():
    with pytest.raises(SkullVAEError):
        make_phantom_cohort(0, seed=0)


def test_cli_writes_a_data_set(tmp_path):
    out = tmp_path / "data"
    argv = ["phantoms", "--n", "2", "--out", str(out), "--seed", "3", "--shape", "64,64,48", "--progress", "none"]
    assert main([*argv, "--with-defects"]) == 0
    for folder in ("complete_skull", "defective_skull", "implant", "facial_defective_skull", "facial_implant"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["phantom_000.nrrd", "phantom_001.nrrd"]
    complete = read_skull(out / "complete_skull" / "phantom_001.nrrd")
    np.testing.assert_allclose(complete.spacing, [3.2, 3.2, 3.2])
    for defective_dir, implant_dir in (("defective_skull", "implant"), ("facial_defective_skull", "facial_implant")):
        defective = read_skull(out / defective_dir / "phantom_001.nrrd")
        implant = read_skull(out / implant_dir / "phantom_001.nrrd")
        assert defective.same_geometry(complete) and implant.same_geometry(complete)
        assert np.array_equal(defective.mask | implant.mask, complete.mask)
        assert not (defective.mask & implant.mask).any()
    # same seed → same files
    again = tmp_path / "again"
    assert (
        main(["phantoms", "--n", "1", "--out", str(again), "--seed", "3", "--shape", "64,64,48", "--progress", "none"])
        == 0
    )
    assert np.array_equal(
        read_skull(again / "complete_skull" / "phantom_000.nrrd").mask,
        read_skull(out / "complete_skull" / "phantom_000.nrrd").mask,
    )


@pytest.mark.parametrize("bad", [["--n", "0"], ["--seed", "-1"]])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, bad):
    argv = ["phantoms", "--n", "1", "--out", str(tmp_path / "x"), "--shape", "64,64,48", "--progress", "none"]
    assert main(argv + bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skullvae phantoms: error:")


def _files(folder):
    """Every file under ``folder`` (relative path) and its bytes."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _phantoms_cli(out, *extra):
    return main(["phantoms", "--out", str(out), "--shape", "64,64,48", "--progress", "none", *map(str, extra)])


def test_cli_refuses_to_replace_a_data_set_without_overwrite(tmp_path, capsys):
    out = tmp_path / "data"
    assert _phantoms_cli(out, "--n", "2", "--with-defects") == 0
    (out / "complete_skull" / "notes.txt").write_text("mine")
    before = _files(out)
    capsys.readouterr()
    assert _phantoms_cli(out, "--n", "1", "--seed", "4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0] and "complete_skull/" in err[0]
    assert _files(out) == before
    # --overwrite: the new cohort replaces every phantom file; none of the old cohort stays, other files do
    assert _phantoms_cli(out, "--n", "1", "--seed", "4", "--overwrite") == 0
    after = _files(out)
    assert sorted(after) == ["complete_skull/notes.txt", "complete_skull/phantom_000.nrrd"]
    assert after["complete_skull/phantom_000.nrrd"] != before["complete_skull/phantom_000.nrrd"]
    assert not [p for p in out.rglob(".*")]  # no temporaries left


def test_cli_bad_out_is_one_line_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _phantoms_cli(tmp_path / "file", "--n", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a folder" in err[0] and str(tmp_path / "file") in err[0]
    assert _phantoms_cli(tmp_path / "a" / "b" / "c", "--n", "1") == 2
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failure_midway_writes_nothing(tmp_path, monkeypatch):
    import SkullVAELib.data.phantoms as phantoms
    from SkullVAELib.workflows import make_phantom_set

    real, calls = phantoms.make_phantom, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise SkullVAEError("simulated failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantoms, "make_phantom", failing)
    with pytest.raises(SkullVAEError, match="simulated"):
        make_phantom_set(3, tmp_path / "data", shape=SMALL, with_defects=True)
    assert len(calls) == 2 and not (tmp_path / "data").exists()


def test_preview_png(tmp_path):
    from SkullVAELib.data.defects import cranial_defect
    from SkullVAELib.evaluation.figures import save_mip_png

    image = make_phantom(2, shape=SMALL, spacing=None)
    defective, implant = cranial_defect(image, 0)
    path = tmp_path / "preview.png"
    save_mip_png([image, ("defective", defective, implant)], path, mode="max")
    save_mip_png([("implant", image, implant.mask)], tmp_path / "xray.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "xray.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    with pytest.raises(SkullVAEError, match="overlay"):
        save_mip_png([("bad", image, np.zeros((3, 3, 3), dtype=bool))], tmp_path / "bad.png")
    with pytest.raises(SkullVAEError, match="mode"):
        save_mip_png([image], tmp_path / "bad.png", mode="mean")
    assert not (tmp_path / "bad.png").exists()
