"""The fit-completion workflow: encode the training skulls, store centroids, DEV vectors and the classifier."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from SkullVAELib.core.config import DEFECTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress


@dataclass
class FittedCompletion:
    """What :func:`fit_completion_data` stored in the bundle."""

    cases: int  # volumes encoded
    counts: dict[str, int]  # per class
    dev_norms: dict[str, float]  # |DEV_defect| per defect class with a centroid
    missing: list[str] = field(default_factory=list)  # defect classes without cases (no DEV)


def fit_completion_data(
    model: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    *,
    train_ids: Sequence[str] | str | None = None,
    resample: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 4,
    device: str = "auto",
    progress: ProgressCallback | None = None,
) -> FittedCompletion:
    """Fit the completion data of the bundle ``model`` (updated in place: completion.json).

    ``resample`` None uses the mode the model was trained with; ``train_ids`` selects cases
    (``case_ids.parse_id_spec``); None uses every case of ``data``.
    """
    import numpy as np

    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.core.devices import resolve_device
    from SkullVAELib.data.dataset import build_cache, discover_cases, select_cases
    from SkullVAELib.io.outputs import check_output_folder
    from SkullVAELib.vae.centroids import fit_completion

    if batch_size < 1:
        raise SkullVAEError(f"--batch-size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    bundle = ModelBundle.load(model, device="cpu")
    check_output_folder(model, "--model")  # completion.json is written there: fail before the work
    cases = select_cases(discover_cases(data), train_ids)
    progress = progress or no_progress
    mode = resample or bundle.resample
    cached = build_cache(cases, bundle.network.grid, cache_dir=cache_dir, mode=mode, progress=progress)
    progress("encode", 0.0, f"encoding {len(cases)} skulls")
    centroids = fit_completion(bundle, cached, batch_size=batch_size, device=str(dev))
    bundle.to("cpu")
    bundle.save_completion(model)
    progress("encode", 1.0, "done")
    return FittedCompletion(
        cases=len(cases),
        counts=dict(bundle.completion_info.get("counts", {})),
        dev_norms={d: float(np.linalg.norm(bundle.dev(d))) for d in bundle.defect_classes},
        missing=[d for d in DEFECTS if d not in centroids],
    )
