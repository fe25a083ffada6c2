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
    "volume_ml", "true_volume_ml", "empty", "seconds", "messages",
)  # fmt: skip


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
    refiner: str | os.PathLike | None = None,
) -> tuple[dict, Path]:
    """Run the protocol (:func:`implant_eval.run_protocol`) and write its files; (summary, table path).

    A model is needed only for the ``vae*`` methods, an atlas set (folder) only for the
    ``*atlas`` ones, a facial refiner (``refiner.safetensors``) only for the ``*learned`` ones;
    none of them may have seen any of ``test_ids``.
    """
    from SkullVAELib.evaluation import implants as implant_eval

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SkullVAEError("exists and is not a folder", out)
    bad = [m for m in methods if m not in implant_eval.METHODS]
    if bad:
        raise SkullVAEError(
            f"unknown implant method(s) {', '.join(bad)}; choose from {', '.join(implant_eval.METHODS)}"
        )
    bundle = None
    if any(m.startswith("vae") for m in methods):
        if model is None:
            raise SkullVAEError("the vae* implant methods need --model")
        from SkullVAELib.bundle.model_bundle import ModelBundle
        from SkullVAELib.workflows.evaluate import recorded_train_ids

        bundle = ModelBundle.load(model)
        bundle.require_completion(model)
        seen = sorted(set(recorded_train_ids(bundle) or []) & set(test_ids))
        if seen:
            raise SkullVAEError(
                f"refusing to evaluate implants on case ids the model trained on: {', '.join(seen[:5])}"
            )
    atlas_set = None
    if any(m.endswith("atlas") for m in methods):
        if atlas is None:
            raise SkullVAEError("the *atlas implant methods need --atlas (a folder from `skullvae build-atlas`)")
        from SkullVAELib.implant.atlas import AtlasSet

        atlas_set = AtlasSet.load(atlas)
        seen = sorted(set(atlas_set.ids) & set(test_ids))
        if seen:
            raise SkullVAEError(f"refusing to evaluate on case ids the atlas set holds: {', '.join(seen[:5])}", atlas)
    facial_refiner = None
    if any(m.endswith("learned") for m in methods):
        if refiner is None:
            raise SkullVAEError("the *learned implant methods need --refiner (from `skullvae train-refiner`)")
        from SkullVAELib.core.devices import resolve_device
        from SkullVAELib.implant.learned.infer import FacialRefiner

        facial_refiner = FacialRefiner.load(refiner, str(resolve_device(device)))
        # its validation ids chose the weights, so scoring them is a validation run, not a test
        seen = sorted(set(facial_refiner.info.get("train_ids", [])) & set(test_ids))
        if seen:
            raise SkullVAEError(
                f"refusing to evaluate on case ids the refiner trained on: {', '.join(seen[:5])}", refiner
            )
    rows = implant_eval.run_protocol(
        list(data),
        list(test_ids),
        list(methods),
        list(defects),
        list(seeds),
        bundle,
        device,
        progress,
        atlas=atlas_set,
        refiner=facial_refiner,
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
