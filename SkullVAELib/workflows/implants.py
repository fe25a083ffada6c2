"""The implant ablation of ``skullvae evaluate --implants``: methods × defect types at original resolution.

Writes ``OUT/implants.csv`` (one row per case, defect, seed and method), ``OUT/implants.json``
(rows and summaries) and ``OUT/implants.md`` (the table: mean [bootstrap 95 % CI] (median)).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback

CSV_COLUMNS = (
    "case_id", "defect", "seed", "method", "dsc", "bdsc", "hd95", "skull_dsc",
    "volume_ml", "true_volume_ml", "empty", "seconds", "source", "messages",
)  # fmt: skip


def _refuse_seen_ids(folder, used: set[str], test_ids: set[str]) -> None:
    """Refuse a method whose part is missing, and test ids that a used part (model, atlas set,
    refiner) trained on or holds."""
    needs = {
        "model": ("has_vae", "--model"),
        "atlas": ("has_atlas", "--atlas"),
        "learned": ("has_refiner", "--refiner"),
        "residual": ("has_residual", "--residual"),
    }
    for source, (present, option) in needs.items():
        if source in used and not getattr(folder, present):
            raise SkullVAEError(f"the {source} implant source needs {option} (or a model folder that holds it)")
    if "model" in used:
        from SkullVAELib.workflows.evaluate import recorded_train_ids

        bundle = folder.vae()
        bundle.require_completion(folder.vae_path)
        seen = sorted(set(recorded_train_ids(bundle) or []) & test_ids)
        if seen:
            raise SkullVAEError(
                f"refusing to evaluate implants on case ids the model trained on: {', '.join(seen[:5])}"
            )
    if "atlas" in used:
        seen = sorted(set(folder.atlas().ids) & test_ids)
        if seen:
            raise SkullVAEError(
                f"refusing to evaluate on case ids the atlas set holds: {', '.join(seen[:5])}", folder.atlas_path
            )
    learned = (("learned", "refiner", folder.refiner_path), ("residual", "residual", folder.residual_path))
    for source, part, path in learned:
        if source in used:
            # its validation ids chose the weights, so scoring them is a validation run, not a test
            seen = sorted(set(getattr(folder, part)("cpu").info.get("train_ids", [])) & test_ids)
            if seen:
                raise SkullVAEError(
                    f"refusing to evaluate on case ids the {part} trained on: {', '.join(seen[:5])}", path
                )


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def evaluate_implants(
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    test_ids: Sequence[str],
    methods: Sequence[str],
    defects: Sequence[str] = ("cranial", "vault", "facial"),
    seeds: Sequence[int] = (0,),
    model: str | os.PathLike | None = None,
    device: str = "cpu",
    label: str = "",
    progress: ProgressCallback | None = None,
    atlas: str | os.PathLike | None = None,
    refiner: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    mirror: bool = True,
    shapes: bool = True,
    residual: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> tuple[dict, Path]:
    """Run the protocol (:func:`implant_eval.run_protocol`) and write its files; (summary, table path).

    Every method runs through the product's :class:`~SkullVAELib.pipeline.completer.Completer`.
    The parts the methods use (model, atlas set, refiner, residual) must not have seen any of
    ``test_ids``. Several ``refiner`` (or ``residual``) files are one ensemble (their members'
    probabilities, or shifts, averaged).
    """
    from SkullVAELib.evaluation import implants as implant_eval
    from SkullVAELib.pipeline.settings import (
        AtlasSettings,
        CompletionSettings,
        LearnedSettings,
        ResidualSettings,
        RimFitSettings,
    )

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SkullVAEError("exists and is not a folder", out)
    used = {name for m in methods for name in implant_eval.method_sources(m)}
    settings = CompletionSettings(
        model=None if model is None else Path(model),
        rimfit=RimFitSettings(mirror=mirror, shapes=shapes),
        learned=LearnedSettings(refiner),
        residual=ResidualSettings(residual),
        atlas=AtlasSettings(None if atlas is None else Path(atlas)),
        device=device,
    )
    folder = settings.model_folder()
    _refuse_seen_ids(folder, used, set(test_ids))
    rows = implant_eval.run_protocol(
        list(data), list(test_ids), list(methods), list(defects), list(seeds), settings, progress, folder
    )
    summary = implant_eval.summarise(rows)
    table = implant_eval.markdown_table(summary, label)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "messages": " | ".join(row["messages"])})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "implants.csv", buffer.getvalue())
    record = {
        "test_ids": list(test_ids),
        "methods": list(methods),
        "defects": list(defects),
        "seeds": list(seeds),
        "rows": rows,
        "summary": {f"{m}/{d}": v for (m, d), v in summary.items()},
    }
    atomic_write_text(out / "implants.json", json.dumps(_json_safe(record), indent=1))
    atomic_write_text(out / "implants.md", table)
    return summary, out / "implants.md"
