"""Defect generators: exact identities, placement in physical space, seeds, bad input, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import RETRY_STRIDE, case_seed, cranial_defect, facial_defect, redraws
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.data.recipes import FacialRecipe
from SkullVAELib.io.image import SkullImage, read_skull, write_mask

CUTS = {
    "skullfix": lambda image, seed: cranial_defect(image, seed, style="skullfix"),
    "skullbreak": lambda image, seed: cranial_defect(image, seed, style="skullbreak"),
    "irregular": lambda image, seed: cranial_defect(image, seed, style="irregular"),
    "facial": lambda image, seed: facial_defect(image, seed),
}


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _physical(image: SkullImage, mask: np.ndarray) -> np.ndarray:
    """(N, 3) LPS mm positions of the voxels of ``mask``."""
    affine = image.index_to_physical()
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def skulls() -> dict[str, SkullImage]:
    base = make_phantom(11, shape=(64, 64, 48), spacing=None)  # 3.2 mm voxels
    anisotropic = make_phantom(12, shape=(80, 64, 60), spacing=(2.5, 3.2, 2.6))
    oblique = base.with_mask(base.mask)
    oblique.direction = _rotation_x(20.0)  # like the tilted SkullFix cases
    oblique.origin = np.array([-101.3, -87.2, 14.9])
    # j runs anterior → posterior reversed and i/j swapped: index space no longer matches LPS
    permuted = SkullImage(
        np.ascontiguousarray(base.mask.transpose(1, 0, 2)[::-1]),
        origin=np.array([0.0, 100.0, -40.0]),
        spacing=base.spacing[[1, 0, 2]],
        direction=np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    )
    return {"phantom": base, "anisotropic": anisotropic, "oblique": oblique, "permuted": permuted}


@pytest.mark.parametrize("kind", sorted(CUTS))
@pytest.mark.parametrize("which", ["phantom", "anisotropic", "oblique", "permuted"])
def test_identities(skulls, kind, which):
    complete = skulls[which]
    defective, implant = CUTS[kind](complete, 5)
    assert defective.same_geometry(complete) and implant.same_geometry(complete)
    assert np.array_equal(defective.mask | implant.mask, complete.mask)
    assert not (defective.mask & implant.mask).any()
    fraction = implant.mask.sum() / complete.mask.sum()
    assert 0.005 <= fraction <= 0.35
    assert complete.mask.sum() == skulls[which].mask.sum()  # input untouched


@pytest.mark.parametrize("which", ["phantom", "oblique", "permuted"])
@pytest.mark.parametrize("style", ["skullfix", "skullbreak", "irregular"])
def test_cranial_defect_on_upper_vault(skulls, which, style):
    complete = skulls[which]
    bone = _physical(complete, complete.mask)
    mid_z = 0.5 * (bone[:, 2].min() + bone[:, 2].max())
    for seed in range(3):
        _, implant = cranial_defect(complete, seed, style=style)
        assert _physical(complete, implant.mask)[:, 2].mean() > mid_z


@pytest.mark.parametrize("which", ["phantom", "oblique", "permuted"])
def test_facial_slab_is_anterior_and_low_in_physical_space(skulls, which):
    complete = skulls[which]
    bone = _physical(complete, complete.mask)
    for seed in range(3):
        _, implant = facial_defect(complete, seed)  # FACIAL: a 44 mm slab
        cut = _physical(complete, implant.mask)
        assert cut[:, 1].max() <= bone[:, 1].min() + 44.0 + 1e-3  # within 44 mm of the front (LPS -y)
        assert cut[:, 2].max() <= bone[:, 2].min() + 0.6 * np.ptp(bone[:, 2]) + 1e-3


def test_facial_defect_follows_physical_space_not_index_space(skulls):
    """The same physical skull stored with reversed j gives the same cut."""
    base = skulls["phantom"]
    flipped = SkullImage(
        np.ascontiguousarray(base.mask[:, ::-1]),
        origin=base.origin + np.array([0.0, (base.shape[1] - 1) * base.spacing[1], 0.0]),
        spacing=base.spacing,
        direction=np.diag([1.0, -1.0, 1.0]),
    )
    _, implant = facial_defect(base, 3)
    _, implant_flipped = facial_defect(flipped, 3)
    assert np.array_equal(implant_flipped.mask[:, ::-1], implant.mask)


@pytest.mark.parametrize("kind", sorted(CUTS))
def test_seeded(skulls, kind):
    complete = skulls["phantom"]
    first, second, other = CUTS[kind](complete, 21)[1], CUTS[kind](complete, 21)[1], CUTS[kind](complete, 22)[1]
    assert np.array_equal(first.mask, second.mask)
    assert not np.array_equal(first.mask, other.mask)


def _geometry(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> SkullImage:
    return SkullImage(mask, origin=np.zeros(3), spacing=np.array(spacing))


@pytest.mark.parametrize("kind", sorted(CUTS))
def test_bad_skulls_rejected(kind):
    empty = _geometry(np.zeros((40, 40, 40), dtype=bool))
    ball = np.linalg.norm(np.indices((60, 60, 60)) - 30.0, axis=0) <= 20  # 41 mm across at 1 mm
    tiny = np.zeros((40, 40, 40), dtype=bool)
    tiny[18:22, 18:22, 18:22] = True  # 64 voxels
    for image in (empty, _geometry(ball), _geometry(tiny, spacing=(30.0, 30.0, 30.0))):
        with pytest.raises(SkullVAEError):
            CUTS[kind](image, 0)


def test_bad_arguments_rejected(skulls):
    with pytest.raises(SkullVAEError, match="style"):
        cranial_defect(skulls["phantom"], 0, style="round")
    with pytest.raises(SkullVAEError, match="depths > 0"):
        facial_defect(skulls["phantom"], 0, FacialRecipe(depth_mm=(0.0, 44.0)))
    with pytest.raises(SkullVAEError, match="seed"):
        facial_defect(skulls["phantom"], -1)


def test_redraws_take_the_styles_in_turn_and_skip_a_cut_that_cannot_be_placed(skulls):
    """Draw a of seed s is ``cranial_defect(s + RETRY_STRIDE · a)`` in style ``styles[(first + a) % n]``; a skull the
    generator refuses gives no draw rather than an error; the caller stops when it has one it accepts."""
    complete = skulls["phantom"]
    drawn = list(redraws(complete, 5, ("skullbreak", "irregular"), tries=3, first=1))
    assert [style for style, *_ in drawn] == ["irregular", "skullbreak", "irregular"]
    for attempt, (style, defective, implant) in enumerate(drawn):
        expected = cranial_defect(complete, 5 + RETRY_STRIDE * attempt, style=style)[1]
        assert np.array_equal(implant.mask, expected.mask)
        assert np.array_equal(defective.mask | implant.mask, complete.mask)
    assert len({implant.mask.tobytes() for *_, implant in drawn}) == 3
    empty = _geometry(np.zeros((40, 40, 40), dtype=bool))
    assert list(redraws(empty, 5, ("skullbreak",), tries=2)) == []
    first = next(redraws(complete, 5, ("skullbreak",), tries=100))  # lazily: one draw, not a hundred
    assert first[0] == "skullbreak"


def test_case_seed_depends_on_seed_and_id():
    assert case_seed(1, "007") == case_seed(1, "007")
    assert len({case_seed(1, "007"), case_seed(2, "007"), case_seed(1, "008")}) == 3


@pytest.fixture()
def complete_dir(tmp_path, skulls):
    folder = tmp_path / "data" / "complete_skull"
    for name in ("a", "b"):
        write_mask(skulls["oblique"] if name == "a" else skulls["anisotropic"], folder / f"{name}.nrrd")
    return folder


@pytest.mark.parametrize(
    "kind, folders",
    [("cranial", ("defective_skull", "implant")), ("facial", ("facial_defective_skull", "facial_implant"))],
)
def test_cli_make_defects(tmp_path, complete_dir, kind, folders):
    out = tmp_path / "out"
    argv = ["make-defects", "--complete", str(complete_dir.parent), "--kind", kind, "--seed", "4", "--progress", "none"]
    assert main([*argv, "--out", str(out)]) == 0
    for name in ("a", "b"):
        complete = read_skull(complete_dir / f"{name}.nrrd")
        defective, implant = (read_skull(out / f / f"{name}.nrrd") for f in folders)
        assert defective.same_geometry(complete) and implant.same_geometry(complete)
        assert np.array_equal(defective.mask | implant.mask, complete.mask)
        assert not (defective.mask & implant.mask).any()
    # per-case seeds: case "b" alone (a folder without "a") gives the same cut
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "b.nrrd").write_bytes((complete_dir / "b.nrrd").read_bytes())
    assert (
        main(
            [
                "make-defects",
                "--complete",
                str(alone),
                "--kind",
                kind,
                "--seed",
                "4",
                "--out",
                str(tmp_path / "out2"),
                "--progress",
                "none",
            ]
        )
        == 0
    )
    assert np.array_equal(
        read_skull(tmp_path / "out2" / folders[1] / "b.nrrd").mask, read_skull(out / folders[1] / "b.nrrd").mask
    )


@pytest.mark.parametrize("problem", ["missing", "empty", "corrupt"])
def test_cli_bad_input_exit_2(tmp_path, capsys, problem):
    folder = tmp_path / "in"
    if problem != "missing":
        folder.mkdir()
    if problem == "corrupt":
        (folder / "x.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    out = tmp_path / "out"
    code = main(
        ["make-defects", "--complete", str(folder), "--kind", "facial", "--out", str(out), "--progress", "none"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skullvae make-defects: error:")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.skullfix
def test_real_skullfix_case(skullfix_dir):
    complete = read_skull(skullfix_dir / "complete_skull" / "005.nrrd")  # oblique (≈ 20° tilt)
    for defective, implant in (cranial_defect(complete, 0), facial_defect(complete, 0)):
        assert np.array_equal(defective.mask | implant.mask, complete.mask)
        assert not (defective.mask & implant.mask).any()
        assert 0.01 <= implant.mask.sum() / complete.mask.sum() <= 0.15
