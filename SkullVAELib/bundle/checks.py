"""Validation of a model bundle's JSON files before anything is built from them.

Every field of config.json / completion.json is type- and range-checked with one-line
errors naming the file (a 100,000-deep nesting, ``heads`` as a list, a latent size of
1e400, a classifier scale of 0, ...), and sizes are checked against
:mod:`SkullVAELib.core.limits` before a tensor is allocated. JSON is read only from regular
files of bounded size (a ``completion.json`` linked to ``/dev/urandom`` is refused).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from SkullVAELib.core.config import NetworkConfig
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_network, nonblocking_opener

MAX_JSON_BYTES = 64 * 2**20  # config.json / completion.json are kilobytes; bigger is not ours
MAX_HEAD_CHANNELS = 2  # decoder heads: 1 (sigmoid) or 2 (the reference's softmax, folded)


def read_json(path: Path) -> dict:
    """A JSON object from a regular file of at most MAX_JSON_BYTES (one-line errors)."""
    try:
        with open(path, "rb", opener=nonblocking_opener) as stream:  # a FIFO: refused below, not waited on
            mode = os.fstat(stream.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise SkullVAEError("not a regular file (a device, FIFO or folder); refusing to read it", path)
            data = stream.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise SkullVAEError(f"cannot read JSON ({exc.strerror or exc})", path) from None
    if len(data) > MAX_JSON_BYTES:
        raise SkullVAEError(f"too large for a model JSON file (over {MAX_JSON_BYTES // 2**20} MB)", path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SkullVAEError(f"cannot read JSON ({exc})", path) from None
    except RecursionError:
        raise SkullVAEError("cannot read JSON (nested too deeply)", path) from None
    if not isinstance(doc, dict):
        raise SkullVAEError("expected a JSON object", path)
    return doc


def _positive_int(value, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SkullVAEError(f"invalid network in config: {name} must be a positive integer, got {value!r}", path)
    return value


def network_of(config: dict, path: Path) -> NetworkConfig:
    """The NetworkConfig of a config.json, every field type- and range-checked (one-line errors)."""
    raw = config.get("network")
    if not isinstance(raw, dict):
        raise SkullVAEError("invalid model config ('network' must be an object)", path)
    grid, channels = raw.get("grid"), raw.get("channels")
    if not isinstance(grid, list) or len(grid) != 3:
        raise SkullVAEError(f"invalid network in config: grid must be a list of 3 integers, got {grid!r}", path)
    if not isinstance(channels, list) or not channels:
        raise SkullVAEError(f"invalid network in config: channels must be a list of integers, got {channels!r}", path)
    grid = [_positive_int(g, "grid", path) for g in grid]
    channels = [_positive_int(c, "channels", path) for c in channels]
    latent = _positive_int(raw.get("latent_size"), "latent_size", path)
    check_network(tuple(grid), tuple(channels), latent, path)  # before any allocation
    try:
        return NetworkConfig(grid=tuple(grid), channels=tuple(channels), latent_size=latent)
    except SkullVAEError as exc:
        raise SkullVAEError(f"invalid network in config: {exc.message}", path) from None


def heads_of(config: dict, path: Path) -> dict[str, tuple[int, bool]]:
    """{decoder part: (out_channels, extra_relu)} of a config.json (one-line errors)."""
    heads = config.get("heads")
    if not isinstance(heads, dict):
        raise SkullVAEError(f"invalid model config ('heads' must be an object, got {type(heads).__name__})", path)
    checked = {}
    for part, head in heads.items():
        if not isinstance(head, dict):
            raise SkullVAEError(f"invalid model config (head {part!r} must be an object)", path)
        out, relu = head.get("out_channels"), head.get("extra_relu", False)
        if isinstance(out, bool) or not isinstance(out, int) or not 1 <= out <= MAX_HEAD_CHANNELS:
            raise SkullVAEError(f"invalid model config (head {part!r}: out_channels must be 1 or 2, got {out!r})", path)
        if not isinstance(relu, bool):
            raise SkullVAEError(f"invalid model config (head {part!r}: extra_relu must be true or false)", path)
        checked[str(part)] = (out, relu)
    return checked


def check_classifier(completion_info: dict, latent_size: int) -> None:
    """Validate the stored defect classifier (completion.json "info"): shapes, finite, scale > 0."""
    from SkullVAELib.vae.centroids import CLASSIFIER_KEY, DEFECTS, DefectClassifier

    stored = completion_info.get(CLASSIFIER_KEY)
    if not stored:
        return
    if not isinstance(stored, dict):
        raise SkullVAEError("the defect classifier must be an object")
    clf = DefectClassifier.from_dict(stored)
    d, c = latent_size, len(clf.classes)
    if c == 0 or len(set(clf.classes)) != c or not set(clf.classes) <= set(DEFECTS):
        raise SkullVAEError(f"defect classifier classes must be distinct names of {list(DEFECTS)}, got {clf.classes}")
    rows = 1 if c <= 2 else c
    shapes = {"mean": (d,), "scale": (d,), "coef": (rows, d), "intercept": (rows,)}
    for name, shape in shapes.items():
        value = getattr(clf, name)
        if value.shape != shape:
            raise SkullVAEError(f"defect classifier {name} has shape {value.shape}, expected {shape}")
        if not np.all(np.isfinite(value)):
            raise SkullVAEError(f"defect classifier {name} holds NaN or infinity")
    if not np.all(clf.scale > 0):
        raise SkullVAEError("defect classifier scale must be > 0 (a zero scale divides by zero)")
