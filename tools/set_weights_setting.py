"""Copy a learned source's weights file (refiner.safetensors, residual.safetensors) with some of its
stored settings changed, e.g. to measure test-time mirroring on the same weights::

    python tools/set_weights_setting.py refiner.safetensors tta/refiner.safetensors test_time_mirror=true

Values are JSON (true, 0.4, [1, 2]). Only settings of the file's kind (``RefinerConfig``,
``ResidualConfig``) are accepted; the copy is written atomically and the input is never touched.
Nothing is unpickled.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.implant.learned.config import REFINER_FORMAT, RefinerConfig
from SkullVAELib.implant.residual.config import RESIDUAL_FORMAT, ResidualConfig

SETTINGS = {REFINER_FORMAT: RefinerConfig, RESIDUAL_FORMAT: ResidualConfig}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("settings", nargs="+", help="name=JSON value")
    args = parser.parse_args(argv)
    if args.target.exists() or args.target.resolve() == args.source.resolve():
        print(f"{args.target}: exists; choose a new file", file=sys.stderr)
        return 2
    with safe_open(str(args.source), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    kind = SETTINGS.get(metadata.get("format", ""))
    if kind is None:
        print(f"{args.source}: not a refiner or residual weights file", file=sys.stderr)
        return 2
    config = json.loads(metadata["config"])
    known = {f.name for f in fields(kind)}
    for item in args.settings:
        name, _, value = item.partition("=")
        if name not in known:
            print(f"{args.source}: {kind.__name__} has no setting {name!r}", file=sys.stderr)
            return 2
        config[name] = json.loads(value)
    metadata["config"] = json.dumps(config)
    args.target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.target) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    print(f"wrote {args.target}: {', '.join(args.settings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
