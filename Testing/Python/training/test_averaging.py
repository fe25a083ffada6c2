"""The moving average of a network's weights (``training.averaging``): its arithmetic, the swap that
lets validation score it, and its checkpoint state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from SkullVAELib.core.config import check_ema_decay
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.training.averaging import WeightAverage


def linear(value: float) -> nn.Linear:
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)
    return layer


def set_weights(layer: nn.Linear, value: float) -> None:
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)


def test_the_first_update_copies_and_later_ones_move_by_one_minus_the_decay():
    layer = linear(1.0)
    average = WeightAverage(layer, 0.75)
    average.update(layer)  # the first step copies the weights
    set_weights(layer, 5.0)
    average.update(layer)  # 0.75 * 1 + 0.25 * 5
    set_weights(layer, 9.0)
    average.update(layer)  # 0.75 * 2 + 0.25 * 9
    weights = average.weights()
    assert average.steps == 3
    assert torch.allclose(weights["weight"], torch.full((1, 2), 3.75)) and float(weights["bias"]) == 3.75
    assert float(layer.bias.detach()) == 9.0  # the network keeps its own weights


def test_the_average_is_swapped_in_for_a_block_and_the_own_weights_come_back_even_on_an_error():
    layer = linear(2.0)
    average = WeightAverage(layer, 0.5)
    average.update(layer)
    set_weights(layer, 6.0)
    average.update(layer)  # 4.0
    with average.swapped_into(layer):
        assert float(layer.bias.detach()) == 4.0
        assert float(layer(torch.ones(1, 2)).detach()) == pytest.approx(12.0)
    assert float(layer.bias.detach()) == 6.0
    with pytest.raises(RuntimeError), average.swapped_into(layer):
        raise RuntimeError("validation failed")
    assert float(layer.bias.detach()) == 6.0


def test_the_state_restores_the_same_average_and_step_count():
    layer = linear(1.0)
    average = WeightAverage(layer, 0.9)
    for value in (1.0, 3.0, 7.0):
        set_weights(layer, value)
        average.update(layer)
    restored = WeightAverage(linear(0.0), 0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 3
    for name, value in average.weights().items():
        assert torch.equal(restored.weights()[name], value), name
    set_weights(layer, 11.0)
    average.update(layer)
    restored.update(layer)
    assert torch.equal(restored.weights()["bias"], average.weights()["bias"])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, math.nan])
def test_a_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(SkullVAEError, match="decay in \\(0, 1\\)"):
        WeightAverage(linear(0.0), decay)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, math.nan])
def test_the_setting_accepts_zero_for_none_and_refuses_a_decay_out_of_range(decay):
    assert check_ema_decay(0.0) == 0.0 and check_ema_decay(0.999) == 0.999
    with pytest.raises(SkullVAEError, match="the refiner's ema must be in \\[0, 1\\)"):
        check_ema_decay(decay, "the refiner's ")
