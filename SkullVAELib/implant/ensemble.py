"""Several trained networks of one learned source as one predictor (issue 24: an ensemble).

Each member maps a crop to its own *value* before the threshold: the facial refiner's foreground
probability (the sigmoid of its logits, with its own test-time mirror), the cranial residual's
surface shift in mm (its own bound and mirror). :class:`MemberMean` averages those values over the
members, so the caller thresholds the mean exactly as it thresholds one member's value
(``probability >= threshold``; ``sdf + shift > 0``). The members must place their crops on one grid
(:func:`join_members` refuses, in one line naming the file, members whose grid settings differ).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from SkullVAELib.core.errors import SkullVAEError

# value(network, x): x (B, C, X, Y, Z) float32 -> (B, 1, X, Y, Z) float32, the member's value
MemberValue = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


class MemberMean(torch.nn.Module):
    """The members' values averaged: (B, C, X, Y, Z) -> (B, 1, X, Y, Z).

    Its output is already a value (a probability, a shift in mm), not a raw network output: the
    learned sources' inference uses it as such (``member_probability``, ``member_shift``).
    """

    def __init__(self, members: Sequence[torch.nn.Module], values: Sequence[MemberValue]) -> None:
        super().__init__()
        if not members or len(members) != len(values):
            raise ValueError("an ensemble needs at least one member and one value function per member")
        self.members = torch.nn.ModuleList(members)
        self.values = list(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member, value in zip(self.members, self.values, strict=True):
            v = value(member, x).float()
            total = v if total is None else total + v
        return total / len(self.members)


def check_agreement(configs: Sequence, paths: Sequence[str | os.PathLike], keys: Sequence[str], what: str) -> None:
    """Refuse members whose settings ``keys`` (their grid) differ from the first member's: one line
    naming the member's file and the first setting that differs."""
    first = configs[0]
    for cfg, path in zip(configs[1:], paths[1:], strict=True):
        for key in keys:
            mine, theirs = getattr(cfg, key), getattr(first, key)
            if mine != theirs:
                raise SkullVAEError(
                    f"this {what} cannot join the ensemble: its {key} is {_show(mine)}, "
                    f"{Path(paths[0]).name}'s is {_show(theirs)} (the members must share one grid)",
                    path,
                )


def _show(value) -> str:
    return "x".join(f"{v:g}" for v in value) if isinstance(value, tuple | list) else f"{value:g}"


def join_members(
    loaded: Sequence[tuple[torch.nn.Module, object, dict]],
    paths: Sequence[str | os.PathLike],
    keys: Sequence[str],
    what: str,
    value: Callable[[torch.nn.Module, torch.Tensor, object], torch.Tensor],
) -> tuple[torch.nn.Module, object, dict]:
    """(network, config, info) of several loaded members ``(network, config, info)`` from ``paths``.

    One member is returned as it is. Several give a :class:`MemberMean` of ``value(network, x,
    member's config)``, the first member's config with ``test_time_mirror`` off (the grid; each
    member applies its own mirror and bounds inside the mean) and an info whose ``train_ids`` / ``val_ids`` are the union of the members' (an
    evaluation refuses every case any member trained on), ``interrupted`` when any member's
    training was, and ``members``: each file with its own info.
    """
    if len(loaded) == 1:
        return loaded[0]
    configs = [cfg for _, cfg, _ in loaded]
    check_agreement(configs, paths, keys, what)
    values = [_bind(value, cfg) for cfg in configs]
    network = MemberMean([net for net, _, _ in loaded], values).eval()
    infos = [info for _, _, info in loaded]
    info: dict = {"members": [{"path": str(p), **i} for p, i in zip(paths, infos, strict=True)]}
    for key in ("train_ids", "val_ids"):
        info[key] = sorted({i for member in infos for i in member.get(key, [])})
    info["interrupted"] = any(member.get("interrupted") for member in infos)
    return network, dataclasses.replace(configs[0], test_time_mirror=False), info


def _bind(value, cfg) -> MemberValue:
    return lambda network, x: value(network, x, cfg)
