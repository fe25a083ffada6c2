"""An exponential moving average of a network's weights (Polyak averaging) for the step trainers.

After every optimiser step the average moves towards the network's weights: ``avg ← decay · avg +
(1 − decay) · w`` (the first step copies them). A decay of 0.999 averages over about the last 1,000
steps. The average is what validation scores, what the best weights keep and what a run without
validation ends with; the network itself goes on training on its own weights. Built on PyTorch's
:class:`torch.optim.swa_utils.AveragedModel` with :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`;
its state (the average and the number of steps averaged) travels in the checkpoint, so a resume
continues the same average.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from SkullVAELib.core.errors import SkullVAEError


class WeightAverage:
    """The moving average of ``model``'s parameters and buffers, with ``decay`` in (0, 1)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise SkullVAEError(f"a weight average needs a decay in (0, 1), not {decay}")
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def steps(self) -> int:
        """How many updates the average has taken."""
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after an optimiser step)."""
        self.averaged.update_parameters(model)

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights under ``model``'s own state-dict names."""
        return self.averaged.module.state_dict()

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model`` holds the averaged weights; its own are put back afterwards."""
        own = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.weights())
        try:
            yield
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average and its step count, for a checkpoint."""
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
