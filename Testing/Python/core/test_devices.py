"""The device rules: ``--device`` and a learned source's training ``precision`` (core/devices.py)."""

from __future__ import annotations

import pytest
import torch

from SkullVAELib.core import devices
from SkullVAELib.core.errors import SkullVAEError


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_a_cpu_computes_bf16_natively_only_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert devices.native_bf16("cpu") is native
    assert devices.training_bf16("auto", "cpu") is native
    assert devices.training_bf16("bf16", "cpu") and not devices.training_bf16("fp32", "cpu")
    assert devices.native_bf16("cuda:0") and not devices.native_bf16("meta")


def test_a_torch_without_the_cpu_probes_trains_in_fp32(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert not devices.training_bf16("auto", "cpu")


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(SkullVAEError, match="unknown precision 'fp16'") as err:
        devices.training_bf16("fp16", "cpu")
    assert "\n" not in str(err.value)
