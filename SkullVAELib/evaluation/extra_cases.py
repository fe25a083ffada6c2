"""Scored cranial cases on skulls that come with a defect and no ground truth (``skullfix_test``).

Such a skull has a hole of its own and nothing that says what bone it lacks. To score a cranial
source on it anyway (other patients than the data set's 000–079), the existing hole is first
filled by the product's rim fit: that *pseudo-complete* skull (the patient's bone ∪ the rim fit's
implant there) then gets a new defect of a random vault style, drawn as for a complete skull
(:func:`SkullVAELib.data.defects.cranial_defect`), and the bone that defect removes is the truth.
A draw whose removed bone comes within ``exclude_mm`` of the filled hole is drawn again, so the
truth is the patient's own bone throughout and the new hole's rim never touches the filled one.

The completed-skull DSC of such a case is measured against the pseudo-complete skull, whose filled
hole is a rim fit: read it as a check of the new hole only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.layout import LABEL_FOLDERS
from SkullVAELib.evaluation.implants import VAULT_STYLES, DefectCase, defect_cases, find_case_file
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.distance import depth_mm
from SkullVAELib.io.image import SkullImage, read_skull

EXCLUDE_MM = 10.0  # the new defect's removed bone stays this far (mm) from the filled hole
TRIES = 8  # draws per (skull, style, seed) before the pair is left out


def has_ground_truth(root: str | Path) -> bool:
    """True where ``root`` holds complete skulls (SkullFix's layout); False for a folder of defective
    skulls only (``skullfix_test``)."""
    return (Path(root) / LABEL_FOLDERS["complete"]).is_dir()


def fill_existing_hole(defective: SkullImage) -> np.ndarray:
    """The implant (bool (I, J, K)) of ``defective``'s own hole by ``skullvae complete``'s rim-fit source with its
    defaults (the mirror cue; the product's :class:`~SkullVAELib.pipeline.completer.Completer`)."""
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings

    settings = CompletionSettings(defect="cranial", sources=("rimfit",), quality=False)
    return Completer(settings).complete(defective).implant.mask


def distance_from(mask: np.ndarray, spacing: Sequence[float], reach_mm: float) -> np.ndarray:
    """Distance (mm, float32 (I, J, K)) of every voxel from ``mask``, exact up to ``reach_mm`` and ``inf``
    beyond ``mask``'s bounding box grown by the reach (:func:`~SkullVAELib.implant.distance.depth_mm` there)."""
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    box = bounding_box(mask, margin=np.ceil(reach_mm / np.asarray(spacing, dtype=float)).astype(int) + 1)
    if box is not None:
        out[box] = depth_mm(~mask[box], spacing)  # the depth of the outside: the distance to the mask
    return out


def draw_away_from(
    complete: SkullImage, distance_mm: np.ndarray, seed: int, style: str, exclude_mm: float = EXCLUDE_MM
) -> tuple[SkullImage, SkullImage] | None:
    """(defective, implant) of a ``style`` defect cut on ``complete`` whose removed bone lies at least
    ``exclude_mm`` from the filled hole (``distance_mm``, mm per voxel); None after :data:`TRIES`
    draws (:func:`~SkullVAELib.data.defects.redraws`)."""
    from SkullVAELib.data.defects import redraws

    for _, defective, implant in redraws(complete, seed, (style,), TRIES):
        if distance_mm[implant.mask].min() >= exclude_mm:
            return defective, implant
    return None


def extra_defect_cases(
    root: str | Path,
    case_ids: Sequence[str],
    defect_types: Sequence[str] = ("vault", "irregular"),
    seeds: Sequence[int] = (0,),
    exclude_mm: float = EXCLUDE_MM,
) -> Iterator[DefectCase]:
    """The scored cases of a folder of defective skulls only (``root/defective_skull/ID``), lazily.

    ``defect_types`` are drawn styles (``vault``, ``irregular``); the case seed is
    :func:`~SkullVAELib.data.defects.case_seed` of (seed, ``"extra-" + ID``), so the pairs differ from
    those of the data set's ids. A pair no draw places away from the existing hole is left out.
    """
    from SkullVAELib.data.defects import case_seed

    bad = [d for d in defect_types if d not in VAULT_STYLES]
    if bad:
        raise SkullVAEError(
            f"defect type(s) {', '.join(bad)} need a complete skull; a folder of defective skulls gives "
            f"{', '.join(VAULT_STYLES)}",
            root,
        )
    folder = Path(root) / LABEL_FOLDERS["cranial"]
    for cid in case_ids:
        path = find_case_file(folder, cid)
        if path is None:
            raise SkullVAEError(f"case {cid}: no {LABEL_FOLDERS['cranial']}/{cid}.*", root)
        defective = read_skull(path, kind="binary")
        filled = fill_existing_hole(defective)
        complete = defective.with_mask(defective.mask | filled)
        distance_mm = distance_from(filled, defective.spacing, exclude_mm)
        for defect in defect_types:
            for seed in seeds:
                seed_of_case = case_seed(int(seed), f"extra-{cid}")
                drawn = draw_away_from(complete, distance_mm, seed_of_case, VAULT_STYLES[defect], exclude_mm)
                if drawn is not None:
                    new_defective, implant = drawn
                    yield DefectCase(cid, defect, int(seed), new_defective, implant.mask, complete.mask)


def scored_cases(
    root: str | Path, case_ids: Sequence[str], defect_types: Sequence[str], seeds: Sequence[int] = (0,)
) -> Iterator[DefectCase]:
    """The scored cases of any data folder: :func:`~SkullVAELib.evaluation.implants.defect_cases` where
    ``root`` has complete skulls, :func:`extra_defect_cases` where it has defective skulls only."""
    cases = defect_cases if has_ground_truth(root) else extra_defect_cases
    return cases(root, case_ids, defect_types, seeds)
