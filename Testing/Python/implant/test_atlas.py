"""The atlas implant (issue 9, facial defects): registered complete skulls fill what the rim fit cannot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.atlas import AtlasConfig, AtlasSet, atlas_implant, build_atlas_set
from SkullVAELib.io.image import SkullImage, write_mask

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
CFG = AtlasConfig(n_atlases=3, mesh_mm=60.0)


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    pairs = []
    for seed in (1, 2, 3, 4):
        path = root / "skulls" / f"{seed:03d}.nrrd"
        path.parent.mkdir(exist_ok=True)
        write_mask(make_phantom(seed, SHAPE, SPACING), path)
        pairs.append((f"{seed:03d}", path))
    return build_atlas_set(pairs, root / "set", spacing_mm=4.0).folder


@pytest.fixture(scope="module")
def facial_case():
    return facial_defect(make_phantom(7, SHAPE, SPACING), seed=0)


@pytest.fixture(scope="module")
def facial_fill(atlas_dir, facial_case):
    """The facial case's atlas implant at the default limits, the progress it reported and the
    largest memory estimate checked before each stage, by the stage's name."""
    from SkullVAELib.core import limits
    from SkullVAELib.implant.atlas import fill as fill_module

    calls: list[tuple[float, str]] = []
    estimates: dict[str, float] = {}

    def check(estimate: float, what: str, path=None) -> None:
        estimates[what] = max(estimates.get(what, 0.0), estimate)
        limits.check_memory(estimate, what, path)

    with pytest.MonkeyPatch.context() as patch:
        for name in (limits.ENV_MAX_VOXELS, limits.ENV_MAX_MEMORY_GB):
            patch.delenv(name, raising=False)
        limits.reset_limits()
        patch.setattr(fill_module, "check_memory", check)
        progress = lambda stage, f, m="": calls.append((f, m))  # noqa: E731
        fill = atlas_implant(facial_case[0], AtlasSet.load(atlas_dir), CFG, progress)
    return fill, calls, estimates


def test_atlas_implant_fills_a_facial_defect_without_touching_the_patient(atlas_dir, facial_case, facial_fill):
    defective, truth = facial_case
    fill, calls, _ = facial_fill
    before = facial_defect(make_phantom(7, SHAPE, SPACING), seed=0)[0].mask
    assert np.array_equal(defective.mask, before)  # the patient's bone is never modified
    assert fill.implant.shape == defective.shape and fill.implant.any()
    assert not (fill.implant & defective.mask).any()
    assert dice(fill.implant, truth.mask) >= 0.5
    volume = np.count_nonzero(fill.implant) * defective.voxel_volume_mm3
    assert 0.5 <= volume / fill.expected_volume_mm3 <= 2.0  # the volume check's estimate agrees
    assert len(fill.atlases) == 3 and set(fill.timings) >= {"atlas_choose", "atlas_register", "atlas_fuse"}
    # every atlas tried and every one fused is reported (choosing 56 took ≈ 55 s, fusing 5 ≈ 30 s)
    assert all(any("choosing" in m and i in m for _, m in calls) for i in AtlasSet.load(atlas_dir).ids)
    assert all(any("fusing" in m and i in m for _, m in calls) for i in fill.atlases)
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and 0.0 <= calls[0][0] <= calls[-1][0] == 1.0


def test_small_pieces_far_from_the_defect_are_dropped(facial_case, monkeypatch):
    """Atlas bone beyond the patient's surface far from the defect (a stray piece) is not implant."""
    from SkullVAELib.implant.atlas.fill import localise

    defective, truth = facial_case
    probability = truth.mask.astype(np.float32)  # a perfect atlas for the face ...
    stray = np.zeros_like(truth.mask)  # ... plus a blob on the back of the skull, touching it
    i, k = SHAPE[0] // 2, SHAPE[2] // 2 + 4
    j = int(np.flatnonzero(defective.mask[i, :, k]).max())
    stray[i - 2 : i + 3, j + 1 : j + 6, k - 2 : k + 3] = True
    probability[stray & ~defective.mask] = 1.0
    kept = localise(defective, probability, AtlasConfig())
    assert dice(kept, truth.mask) >= 0.8 and not (kept & stray).any()
    # without the rule (and the shared post-processing's far-piece rule) the stray piece would be kept
    monkeypatch.setattr("SkullVAELib.implant.postprocess._near_pieces", lambda labels, sizes, *args: sizes)
    everything = localise(defective, probability, AtlasConfig(min_piece_fraction=0.0))
    assert (everything & stray).any()


def test_the_implant_is_attached_to_the_rim_it_was_cut_back_from():
    """Step 6: the band the exposed-margin rule leaves between implant and cut edge is filled
    from the atlases' shared bone, and only that band (not bone far from the implant)."""
    from SkullVAELib.implant.atlas.fill import attach_to_rim

    mask = np.zeros((40, 40, 20), dtype=bool)
    mask[:10] = True  # the patient's bone: a slab with its cut face at i = 10
    skull = SkullImage(mask, np.zeros(3), np.ones(3))
    shared = np.zeros_like(mask)
    shared[8:30, 5:35] = True  # what the atlases agree on: the missing part, overlapping the bone
    implant = shared & ~mask
    implant[:12] = False  # cut back 2 mm from the rim
    shared[10:12, 38:] = True  # shared bone at the rim but 4 mm away from the implant: not added
    attached = attach_to_rim(skull, implant, shared, AtlasConfig())
    assert not (attached & mask).any() and (attached & implant).sum() == implant.sum()
    assert attached[10:12, 5:35].all()  # the band is filled ...
    assert not attached[10:12, 38:].any()  # ... and nothing out of reach of the implant
    off = attach_to_rim(skull, implant, shared, AtlasConfig(rim_attach_mm=0.0))
    assert np.array_equal(off, implant)


def test_atlas_bone_lying_beside_the_patients_own_far_from_the_face_is_dropped():
    """Step 7: a band of atlas bone along the patient's bone, running back from the implant (an
    orbital roof doubled by the registration) goes; the band at the cut edge, next to the core, stays."""
    from SkullVAELib.implant.atlas.fill import drop_doubled_bone

    mask = np.zeros((48, 40, 20), dtype=bool)
    mask[:10] = True  # the patient's bone: a slab cut at i = 10 ...
    mask[:, :2] = True  # ... and a plate that runs on behind the cut (j < 2)
    skull = SkullImage(mask, np.zeros(3), np.ones(3))
    implant = np.zeros_like(mask)
    implant[10:30, 5:35] = True  # the missing block: its core lies ≥ 6 mm from the bone
    implant[10:46, 2:4] = True  # a doubled band 0–2 mm from the plate, running to i = 46
    cfg = AtlasConfig(doubled_near_mm=4.0, doubled_core_mm=6.0)
    kept = drop_doubled_bone(skull, implant, cfg)
    assert not (kept & ~implant).any() and not (kept & mask).any()
    assert not kept[37:, 2:4].any()  # the band far from the core is gone ...
    assert kept[10:12, 5:35].all() and kept[14:24, 2:4].all()  # ... the rim and the band by the block stay
    assert kept[16:30, 8:35].all()  # the core itself is never touched
    assert np.array_equal(drop_doubled_bone(skull, implant, AtlasConfig(doubled_near_mm=0.0)), implant)
    shallow = np.zeros_like(mask)
    shallow[10:13, 5:35] = True  # no voxel 6 mm deep: nothing to measure from, kept whole
    assert np.array_equal(drop_doubled_bone(skull, shallow, cfg), shallow)


def test_the_deformable_metric_sees_the_patients_bone_by_the_cut_only_when_asked():
    """Near the missing part the B-spline's metric is blind, except (``keep_bone``) on the patient's
    own bone voxels there: one-sided, so atlas bone continuing past the cut costs nothing."""
    import SimpleITK as sitk

    from SkullVAELib.implant.atlas.register import metric_mask, without_missing_part

    bone = np.zeros((40, 20, 20), dtype=np.float32)
    bone[:20] = 1.0  # the patient: bone up to its cut at i = 20
    atlas = np.ones_like(bone)  # an atlas that continues past the cut
    fixed, placed = sitk.GetImageFromArray(bone.T.copy()), sitk.GetImageFromArray(atlas.T.copy())
    for image in (fixed, placed):
        image.SetSpacing((2.0, 2.0, 2.0))
    mask = metric_mask(fixed, 2.0)

    def seen(keep_bone: bool) -> np.ndarray:
        out = without_missing_part(fixed, mask, [placed], 4.0, 12.0, keep_bone=keep_bone)
        return sitk.GetArrayFromImage(out).T.astype(bool)

    blind, one_sided = seen(False), seen(True)
    assert not blind[17:20].any() and blind[:12].all()  # the bone by the cut is hidden by default
    assert one_sided[17:20].all() and one_sided[:12].all()  # its voxels are seen when asked ...
    assert not one_sided[20:].any()  # ... and never the space past the cut


def test_an_atlas_implant_of_implausible_volume_is_flagged(monkeypatch, facial_case):
    """The Completer checks the atlas implant's volume against what its atlases add on average."""
    import SkullVAELib.implant.atlas as atlas_package
    from SkullVAELib.bundle.folder import ModelFolder
    from SkullVAELib.implant.atlas.fill import AtlasFill
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings

    defective, truth = facial_case
    volume = np.count_nonzero(truth.mask) * defective.voxel_volume_mm3

    for expected, flagged in ((volume, False), (5.0 * volume, True)):
        fill = AtlasFill(truth.mask.copy(), expected_volume_mm3=expected)
        monkeypatch.setattr(atlas_package, "atlas_implant", lambda *args, fill=fill, **kwargs: fill)
        completer = Completer(CompletionSettings(defect="facial"), ModelFolder.from_parts(atlas=object()))
        refined = completer.complete(defective)
        assert refined.source == "atlas"
        assert any("implausible" in m for m in refined.warnings) is flagged


def test_an_intact_skull_gets_almost_no_atlas_bone(atlas_dir):
    skull = make_phantom(7, SHAPE, SPACING)
    fill = atlas_implant(skull, AtlasSet.load(atlas_dir), CFG)
    assert np.count_nonzero(fill.implant) < 0.02 * np.count_nonzero(skull.mask)


def test_oblique_patient_grid(atlas_dir, facial_case):
    """The implant lands on the patient's own grid when its direction is oblique (physical space)."""
    defective, truth = facial_case
    angle = np.deg2rad(8.0)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    oblique = SkullImage(defective.mask, defective.origin, defective.spacing, rot)
    fill = atlas_implant(oblique, AtlasSet.load(atlas_dir), CFG)
    assert fill.implant.shape == oblique.shape
    assert dice(fill.implant, truth.mask) >= 0.4  # same voxels: the rotation moved patient and truth together


def test_bad_atlas_folders_are_one_line_errors(tmp_path, atlas_dir):
    with pytest.raises(SkullVAEError, match="not an atlas set"):
        AtlasSet.load(tmp_path)
    (tmp_path / "atlas.json").write_text("{not json")
    with pytest.raises(SkullVAEError, match="unreadable atlas manifest") as err:
        AtlasSet.load(tmp_path)
    assert "atlas.json" in str(err.value) and "\n" not in str(err.value)
    info = json.loads((atlas_dir / "atlas.json").read_text())
    info["cases"][0]["mask"] = "../escape.nrrd"
    (tmp_path / "atlas.json").write_text(json.dumps(info))
    with pytest.raises(SkullVAEError, match="missing"):
        AtlasSet.load(tmp_path)
    info["version"] = 99
    (tmp_path / "atlas.json").write_text(json.dumps(info))
    with pytest.raises(SkullVAEError, match="version"):
        AtlasSet.load(tmp_path)


def test_build_never_overwrites_without_asking_and_leaves_nothing_half_written(tmp_path, atlas_dir):
    src = AtlasSet.load(atlas_dir)
    pairs = [(i, atlas_dir / f"{i}.nrrd") for i in src.ids[:2]]
    with pytest.raises(SkullVAEError, match="--overwrite"):
        build_atlas_set(pairs, atlas_dir)
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\nnonsense\n")
    with pytest.raises(SkullVAEError):
        build_atlas_set([*pairs, ("bad", bad)], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nrrd"]  # no folder, no temporary
    out = build_atlas_set(pairs, tmp_path / "out")
    again = build_atlas_set(pairs[:1], tmp_path / "out", overwrite=True)
    assert len(out) == 2 and again.ids == [pairs[0][0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nrrd", "out"]


def test_overwrite_replaces_an_atlas_set_never_another_folder(tmp_path, atlas_dir):
    """--overwrite replaces the whole folder: a model bundle or data set given as --out by mistake
    (MODEL instead of MODEL/atlas) is refused and left whole; an empty folder is filled."""
    pairs = [(i, atlas_dir / f"{i}.nrrd") for i in AtlasSet.load(atlas_dir).ids[:1]]
    model = tmp_path / "model"
    model.mkdir()
    (model / "vae.safetensors").write_bytes(b"weights")
    with pytest.raises(SkullVAEError, match="no atlas set") as err:
        build_atlas_set(pairs, model, overwrite=True)
    assert "model" in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in model.iterdir()) == ["vae.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    (tmp_path / "empty").mkdir()
    assert len(build_atlas_set(pairs, tmp_path / "empty", overwrite=True)) == 1


def test_the_deformation_field_covers_the_last_partial_block_at_the_high_faces():
    """On a grid that no block factor divides, the 2 mm registration grid, and so the displacement
    field the fusion samples on it, reaches the voxels of the last partial block at the high-index
    faces: they get the registered transform, not the identity (zero displacement outside the field)."""
    import SimpleITK as sitk

    from SkullVAELib.implant.atlas.fill import fuse
    from SkullVAELib.implant.atlas.store import registration_image

    spacing = np.full(3, 0.5)  # 2 mm blocks of 4 voxels: 1, 3 and 1 voxels left over
    patient = SkullImage(np.zeros((21, 19, 17), dtype=bool), np.zeros(3), spacing)
    fixed = registration_image(patient.to_sitk(), 2.0)

    class OneAtlas:  # an all-bone atlas in its own frame, 100 mm away from the patient's
        def mask(self, case_id: str) -> SkullImage:
            return SkullImage(np.ones((40, 40, 40), dtype=bool), np.array([95.0, -5.0, -5.0]), spacing)

        def voxels(self, case_id: str) -> int:
            return 40**3

    affine = sitk.AffineTransform(3)
    affine.SetTranslation((100.0, 0.0, 0.0))
    transform = sitk.CompositeTransform([affine, sitk.BSplineTransformInitializer(fixed, [1, 1, 1], order=3)])
    exact = fuse(patient, OneAtlas(), [("a", transform)])
    sampled = fuse(patient, OneAtlas(), [("a", transform)], field_grid=fixed)
    assert exact.min() == 1.0  # every voxel lands inside the atlas's bone ...
    assert sampled[-1].min() == sampled[:, -3:].min() == sampled[:, :, -1].min() == 1.0  # ... the last blocks too
    np.testing.assert_allclose(sampled, exact, atol=1e-6)
    assert fixed.GetSize() == (6, 5, 5)  # ⌈(21, 19, 17) / 4⌉: whole blocks, the last one padded


# The atlas path's one memory estimate before its stages were counted: fusing, 16 B a patient voxel.
OLD_ESTIMATE_BYTES = 16.0


def _limit_just_above_the_old_estimate(skull: SkullImage) -> float:
    from SkullVAELib.core.limits import set_limits

    limit = 1.1 * OLD_ESTIMATE_BYTES * skull.mask.size
    set_limits(max_memory_gb=limit / 1e9)
    return limit


def test_registering_the_atlases_is_refused_over_the_memory_limit_before_it_starts(
    atlas_dir, facial_case, monkeypatch, default_limits
):
    """The registration images (the patient's, every atlas's, SimpleITK's copies and gradients)
    were not counted: under a limit the old estimate met, the atlases were registered anyway
    (≈ 19 MB on this phantom); now it is one line naming the stage, before any of them is made."""
    from SkullVAELib.implant.atlas import fill as fill_module
    from SkullVAELib.implant.atlas.memory import registration_bytes

    defective, _ = facial_case
    atlases = AtlasSet.load(atlas_dir)
    limit = _limit_just_above_the_old_estimate(defective)
    assert registration_bytes(defective.shape, defective.spacing, atlases, CFG.n_atlases, True) > 2 * limit
    made = []
    monkeypatch.setattr(fill_module, "registration_image", lambda *args: made.append(args))
    with pytest.raises(SkullVAEError, match="registering the atlases to the patient would need") as err:
        atlas_implant(defective, atlases, CFG)
    assert "\n" not in str(err.value) and "GB limit" in str(err.value) and not made


def test_fusing_counts_the_atlas_skulls_and_the_displacement_field(atlas_dir, facial_case, monkeypatch, default_limits):
    """Fusing resamples each atlas skull (a uint8 and a float32 copy on its own grid) through a
    float64 displacement field: refused over the limit before any atlas skull is read."""
    import SimpleITK as sitk

    from SkullVAELib.implant.atlas.fill import fuse
    from SkullVAELib.implant.atlas.store import registration_image

    defective, _ = facial_case
    atlases = AtlasSet.load(atlas_dir)
    fixed = registration_image(defective.to_sitk(), atlases.spacing_mm)
    bspline = sitk.BSplineTransformInitializer(fixed, [1, 1, 1], order=3)
    transforms = [(case_id, sitk.CompositeTransform([sitk.AffineTransform(3), bspline])) for case_id in atlases.ids]
    _limit_just_above_the_old_estimate(defective)
    read = []
    monkeypatch.setattr(AtlasSet, "mask", lambda self, case_id: read.append(case_id))
    with pytest.raises(SkullVAEError, match="fusing the atlases on the patient's grid would need") as err:
        fuse(defective, atlases, transforms, field_grid=fixed)
    assert "\n" not in str(err.value) and not read


def test_locating_the_missing_bone_counts_its_distance_maps(facial_case, monkeypatch, default_limits):
    """The localisation's distance maps (float64 from int32 indices) on the missing bone's box were
    not counted: refused over the limit before they are made."""
    from SkullVAELib.implant.atlas import fill as fill_module

    defective, _ = facial_case
    skulls = [make_phantom(seed, SHAPE, SPACING).mask for seed in (1, 2, 3)]  # three atlases, in place unregistered
    probability = np.mean(skulls, axis=0).astype(np.float32)
    _limit_just_above_the_old_estimate(defective)
    seeded = []
    monkeypatch.setattr(fill_module, "seeded_implant", lambda *args: seeded.append(args))
    with pytest.raises(SkullVAEError, match="locating the missing bone on the patient's grid would need") as err:
        fill_module.localise(defective, probability, AtlasConfig())
    assert "\n" not in str(err.value) and not seeded


def test_a_limit_just_above_every_stage_leaves_the_implant_unchanged(
    atlas_dir, facial_case, facial_fill, default_limits
):
    from SkullVAELib.core.limits import set_limits
    from SkullVAELib.implant.atlas.memory import FUSING, LOCATING, REGISTERING

    fill, _, estimates = facial_fill
    assert set(estimates) == {REGISTERING, FUSING, LOCATING}
    set_limits(max_memory_gb=1.01 * max(estimates.values()) / 1e9)
    again = atlas_implant(facial_case[0], AtlasSet.load(atlas_dir), CFG)
    assert np.array_equal(again.implant, fill.implant) and again.atlases == fill.atlases
    assert again.metrics == fill.metrics and again.expected_volume_mm3 == fill.expected_volume_mm3


def test_a_batch_counts_the_atlas_stages_in_its_per_case_estimate(atlas_dir, facial_case, tmp_path, default_limits):
    """A batch chose its workers by the input's own estimate (16 B a voxel), while the atlas implant, where it may
    run, holds its registration images, fusion and distance maps: the per-case estimate is now the larger of the
    two, and no smaller than what the atlas implant checks before it registers or fuses."""
    import math

    from SkullVAELib.implant.atlas.memory import atlas_case_bytes, fusion_bytes, held_bytes, registration_bytes
    from SkullVAELib.implant.atlas.store import registration_grid
    from SkullVAELib.pipeline.settings import AtlasSettings, CompletionSettings
    from SkullVAELib.workflows.batch_pool import case_estimate, case_memory_bytes

    defective, _ = facial_case
    path = tmp_path / "case.nrrd"
    write_mask(defective, path)
    atlases = AtlasSet.load(atlas_dir)
    low = math.prod(registration_grid(defective.shape, defective.spacing, atlases.spacing_mm)[1])
    need = atlas_case_bytes(defective.shape, defective.spacing, atlases, CFG.n_atlases, True)
    assert need >= registration_bytes(defective.shape, defective.spacing, atlases, CFG.n_atlases, True)
    assert need >= held_bytes(low, atlases) + fusion_bytes(
        defective.mask.size, [atlases.voxels(i) for i in atlases.ids], low
    )
    with_atlas = CompletionSettings(atlas=AtlasSettings(path=atlas_dir, config=CFG))
    assert case_estimate(with_atlas)(path) == max(case_memory_bytes(path), need) > case_memory_bytes(path)
    assert case_estimate(CompletionSettings(sources=("rimfit",), atlas=with_atlas.atlas))(path) == case_memory_bytes(
        path
    )
    assert case_estimate(CompletionSettings())(path) == case_memory_bytes(path)  # no atlas set
