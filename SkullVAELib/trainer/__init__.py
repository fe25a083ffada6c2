"""The two-stage trainer: β-VAE (stage 1) and the decoupled decoder (stage 2). Knows tensors, not files.

* ``loop.py``: :class:`Trainer`, the epoch loop split the way nnU-Net's trainer is
  (``_resume_state``, ``_train_step``, ``_save``, hooks ``on_train_start`` / ``on_epoch_start`` /
  ``on_epoch_end`` / ``on_train_end``): exact resume, Ctrl-C and SIGTERM, wall-time checkpoints,
  validation with early stopping, host-sync-free steps.
* ``stages.py``: what each stage's batch and loss are, and the public ``train_stage1`` /
  ``train_stage2`` / ``encode_dataset``.

The trainer writes ``training_log.csv`` (:mod:`SkullVAELib.training_log`) and checkpoints; it
imports no plotting code (the workflow draws ``curves.png``).
"""

from SkullVAELib.trainer.loop import BatchTransform, EpochCallback, Trainer, epoch_seed
from SkullVAELib.trainer.stages import Stage1Trainer, Stage2Trainer, encode_dataset, train_stage1, train_stage2

__all__ = [
    "BatchTransform",
    "EpochCallback",
    "Stage1Trainer",
    "Stage2Trainer",
    "Trainer",
    "encode_dataset",
    "epoch_seed",
    "train_stage1",
    "train_stage2",
]
