"""Workflows: one typed library function per job; the CLI verbs, the demo and scripts call them.

Each ``cli/<verb>.py`` parses its arguments, makes one call here and prints the result
(nnU-Net's ``run_training`` / ``run_training_entry`` split). Workflows orchestrate engines
(dataset, trainer, centroids, completion, evaluation) and write files; they print nothing.

- ``make_phantom_set``, ``make_defect_set``, ``cache_data_set`` (``workflows.data``): data sets.
- ``train_model`` (``workflows.train``): stage 1 and/or 2 → ModelBundle, ``curves.png``.
- ``fit_completion_data`` (``workflows.fit``): centroids, DEV vectors, defect classifier.
- ``complete_files`` (``workflows.complete``): defective file → .seg.nrrd, STL, uncertainty map.
- ``evaluate_model`` (``workflows.evaluate``): held-out cases → report folder.
- ``import_reference_model`` (``workflows.reference``): the authors' weights → bundle.
- ``build_atlas`` (``workflows.atlas``): training skulls → atlas set for the atlas implant.
- ``build_shapes`` (``workflows.shapes``): training skulls → shape bank, the rim fit's cue across the mid-plane.
- ``pack_refiner_grids``, ``train_refiner`` (``workflows.refiner``): the learned facial refiner.
- ``demo`` (``workflows.phantom_demo``): all of the above on phantoms.

Names are imported lazily (``from SkullVAELib.workflows import train_model`` loads only
``workflows.train``), so a light verb does not pay for torch.
"""

from __future__ import annotations

import importlib

_HOME = {
    "make_phantom_set": "data",
    "make_defect_set": "data",
    "cache_data_set": "data",
    "train_model": "train",
    "fit_completion_data": "fit",
    "complete_files": "complete",
    "evaluate_model": "evaluate",
    "demo": "phantom_demo",
    "import_reference_model": "reference",
    "build_atlas": "atlas",
    "build_shapes": "shapes",
    "pack_refiner_grids": "refiner",
    "train_refiner": "refiner",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"SkullVAELib.workflows.{_HOME[name]}"), name)
    raise AttributeError(f"module 'SkullVAELib.workflows' has no attribute {name!r}")
