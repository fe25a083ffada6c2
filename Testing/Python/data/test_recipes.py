"""One facial and one cranial recipe (SkullVAELib.data.recipes), drawn in numpy (make-defects) and in
torch (the augmentation, the refiner's sampler), and the one bone_bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.data.recipes import FACIAL, FacialRecipe
from SkullVAELib.data.regions import bone_bounds, cranial_region, facial_region
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import SkullImage


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),
        np.diag([1.0, -1.0, 1.0]),
        np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        _rotation(20),
    ],
    ids=["identity", "flipped", "permuted", "oblique"],
)
def test_bone_bounds_are_the_extremes_of_the_bone_voxel_centres(direction):
    skull = make_phantom(3, (40, 36, 30), (3.0, 3.5, 4.0))
    image = SkullImage(skull.mask, np.array([-60.0, 20.0, 5.0]), skull.spacing, direction)
    affine = image.index_to_physical()
    points = np.argwhere(image.mask) @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = bone_bounds(torch.from_numpy(image.mask), image.origin, image.spacing, image.direction)
    np.testing.assert_allclose(lo.numpy(), points.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(hi.numpy(), points.max(axis=0), atol=1e-9)
    box_lo, box_hi = bone_bounds(torch.from_numpy(image.mask), image.origin, image.spacing, image.direction, False)
    assert (box_lo <= lo + 1e-9).all() and (box_hi >= hi - 1e-9).all()  # the index box's corners: around the bone
    assert torch.equal(box_lo, lo) == (direction != _rotation(20)).any()  # ... and the same unless oblique
    with pytest.raises(SkullVAEError, match="no bone"):
        bone_bounds(torch.zeros(4, 4, 4, dtype=torch.bool), image.origin, 1.0)


def test_numpy_and_torch_draw_the_same_facial_slab_from_one_recipe():
    """A recipe with no randomness left cuts the same bone in make-defects (numpy) and in torch."""
    fixed = FacialRecipe(depth_mm=(40.0, 40.0), height=(0.47, 0.47), width=(1.0, 1.0))
    skull = make_phantom(4, (64, 64, 48), (3.2, 3.2, 3.2))
    _, implant = facial_defect(skull, seed=0, recipe=fixed)
    bone = torch.from_numpy(skull.mask)
    lo, hi = bone_bounds(bone, skull.origin, skull.spacing)
    region = facial_region(bone.shape, skull.origin, skull.spacing, lo, hi, torch.Generator().manual_seed(5), fixed)
    drawn = (region & bone).numpy()
    assert implant.mask.sum() > 0.02 * skull.mask.sum()
    assert dice(drawn, implant.mask) > 0.97  # equal up to float ties at the slab's faces


def test_the_default_recipes_keep_the_evaluations_numbers():
    assert (FACIAL.depth_mm, FACIAL.height, FACIAL.width) == ((44.0, 44.0), (0.45, 0.60), (0.60, 1.00))
    with pytest.raises(SkullVAEError, match="fractions"):
        FacialRecipe(height=(0.5, 1.5))


def test_a_drawn_cranial_region_sits_on_the_upper_vault_in_both_styles():
    skull = make_phantom(2, (64, 64, 48), (3.2, 3.2, 3.2))
    bone = torch.from_numpy(skull.mask)
    z = skull.origin[2] + skull.spacing[2] * np.arange(skull.shape[2])
    mid = 0.5 * (
        z[np.nonzero(skull.mask.any(axis=(0, 1)))[0]].min() + z[np.nonzero(skull.mask.any(axis=(0, 1)))[0]].max()
    )
    for style in ("skullfix", "skullbreak"):
        for seed in range(3):
            region = cranial_region(bone, skull.origin, skull.spacing, torch.Generator().manual_seed(seed), style)
            removed = (region & bone).numpy()
            assert removed.sum() > 0.005 * skull.mask.sum(), (style, seed)
            assert z[np.nonzero(removed.any(axis=(0, 1)))[0]].min() >= mid - 10.0  # above mid-height (a voxel or so)
    with pytest.raises(SkullVAEError, match="style"):
        cranial_region(bone, skull.origin, skull.spacing, torch.Generator(), "round")
