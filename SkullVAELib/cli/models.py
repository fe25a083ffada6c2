"""`skullvae models`: list, download, install, remove, locate and describe pretrained models.

Thin: each sub-verb parses, calls one function of :mod:`SkullVAELib.models`, prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from SkullVAELib.cli.common import (
    add_overwrite_arg,
    add_progress_arg,
    close_progress,
    make_progress,
)

DESCRIPTION = (
    "Pretrained model bundles: the registry (SkullVAELib/models/models.json) and the user's model cache "
    "($SKULLVAE_HOME, default: the platform's user cache folder). Downloads resume, are verified "
    "(sha256) and installed atomically. `skullvae complete --model NAME` takes an installed name."
)


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list, download and install pretrained models", description=DESCRIPTION)
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    s = sub.add_parser("list", help="registry entries and installed models")
    s.add_argument("--json", action="store_true", help="one JSON document on stdout (for programs)")
    s.set_defaults(func=run_list)
    s = sub.add_parser("download", help="download, verify and install a registry model")
    s.add_argument("name")
    add_overwrite_arg(s, "download again even if installed")
    add_progress_arg(s)
    s.set_defaults(func=run_download)
    s = sub.add_parser("install", help="install a bundle folder, a .zip/.tar archive, or an archive URL")
    s.add_argument("source", metavar="PATH_OR_URL")
    s.add_argument("--name", help="install under this name (default: registry match or folder name)")
    add_overwrite_arg(s, "replace an installed model of the same name")
    add_progress_arg(s)
    s.set_defaults(func=run_install)
    s = sub.add_parser("remove", help="delete an installed model")
    s.add_argument("name")
    s.set_defaults(func=run_remove)
    s = sub.add_parser("path", help="print the folder of an installed model")
    s.add_argument("name")
    s.set_defaults(func=run_path)
    s = sub.add_parser("info", help="print a model's card (training data, held-out metrics, licence)")
    s.add_argument("name", help="installed name, registry name or bundle folder")
    s.set_defaults(func=run_info)
    s = sub.add_parser("pack", help="archive a bundle for a release; prints its sha256 and size")
    s.add_argument("model", help="bundle folder")
    s.add_argument("--out", required=True, help="archive to write (.zip)")
    s.add_argument("--name", help="registry name (the archive's top folder; default: the folder name)")
    add_overwrite_arg(s, "replace an existing --out archive")
    s.set_defaults(func=run_pack)
    s = sub.add_parser("card", help="set a bundle's card name/version and held-out metrics")
    s.add_argument("model", help="bundle folder")
    s.add_argument("--metrics", help="summary.json written by `skullvae evaluate`")
    s.add_argument("--split", default="", help="text describing the held-out split, e.g. 'test 064-079'")
    s.add_argument("--name", default=None)
    s.add_argument("--version", default=None)
    s.set_defaults(func=run_card)


def run_list(args: argparse.Namespace) -> int:
    from SkullVAELib.models import installed_models, load_registry, models_home

    registry, home = load_registry(), models_home()
    installed = {m.name: m for m in installed_models(home)}
    rows = [
        {
            "name": e.name,
            "version": e.version,
            "grid": "x".join(map(str, e.grid or ())),
            "kind": e.kind,
            "installed": e.name in installed,
            "released": e.released,
            "status": "installed" if e.name in installed else e.status(),
            "url": e.url,
            "size": e.size,
            "licence": e.licence,
        }
        for e in registry.entries
    ]
    rows += [
        {"name": n, "version": m.version, "grid": "", "kind": "", "installed": True, "released": None,
         "status": f"installed (local, from {m.source or 'unknown'})", "url": "", "size": None, "licence": ""}
        for n, m in installed.items() if registry.get(n) is None
    ]  # fmt: skip
    if args.json:
        print(json.dumps({"home": str(home), "registry": str(registry.path), "models": rows}, indent=1))
        return 0
    print(f"model cache: {home / 'models'}  (set SKULLVAE_HOME to use another folder)")
    print(f"registry:    {registry.path}")
    if not rows:
        print("no models in the registry and none installed")
    width = max([len(r["name"]) for r in rows] + [4])
    for r in rows:
        details = " ".join(x for x in (f"v{r['version']}" if r["version"] else "", r["kind"], r["grid"]) if x)
        licence = f"  licence: {r['licence']}" if r["licence"] else ""
        print(f"  {r['name']:<{width}}  {details:<24}  {r['status']}{licence}")
    if registry.entries and not registry.any_released:
        print(
            "No release of the pretrained models exists yet: registry entries cannot be downloaded. "
            "Build one with docs/MODELS.md and install it with `skullvae models install FOLDER --name NAME`."
        )
    return 0


def run_download(args: argparse.Namespace) -> int:
    from SkullVAELib.models import download_model, load_registry

    overwrite = args.overwrite
    progress = make_progress(args.progress)
    path = download_model(args.name, progress=progress, overwrite=overwrite)
    close_progress(progress)
    entry = load_registry().get(args.name)
    licence = (entry.licence if entry is not None else "") or "not stated in the registry"
    _done(args, f"installed {args.name} in {path}", path, licence)
    return 0


def run_install(args: argparse.Namespace) -> int:
    from SkullVAELib.models import install_model

    overwrite = args.overwrite
    progress = make_progress(args.progress)
    path = install_model(args.source, name=args.name, progress=progress, overwrite=overwrite)
    close_progress(progress)
    _done(args, f"installed {path.name} in {path}", path)
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from SkullVAELib.models import remove_model

    print(f"removed {remove_model(args.name)}")
    return 0


def run_path(args: argparse.Namespace) -> int:
    from SkullVAELib.models import model_path

    print(model_path(args.name))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.models.card import read_model_card, render_model_card
    from SkullVAELib.models.registry import load_registry
    from SkullVAELib.models.store import installed_models, resolve_model

    installed = {m.name for m in installed_models()}
    folder = Path(args.name)
    entry = load_registry().get(args.name)
    if folder.is_dir() or args.name in installed:
        print(render_model_card(read_model_card(resolve_model(args.name))))
        if entry is not None and args.name in installed and not folder.is_dir():
            print(f"Registry entry {entry.name} (version {entry.version}) licence: {entry.licence or 'not stated'}")
        return 0
    if entry is None:
        raise SkullVAEError(
            f"no model {args.name!r}: not a model folder, an installed model or a registry entry "
            "(see skullvae models list)"
        )
    print(_registry_card(entry))
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from SkullVAELib.models.archive import pack_bundle
    from SkullVAELib.models.download import sha256_file

    archive = pack_bundle(args.model, args.out, top=args.name, overwrite=args.overwrite)
    print(json.dumps({"url_file": archive.name, "sha256": sha256_file(archive), "size": archive.stat().st_size}))
    return 0


def run_card(args: argparse.Namespace) -> int:
    from SkullVAELib.models.card import add_card_metrics, read_model_card, write_model_card

    card = read_model_card(args.model)
    card.update({k: v for k, v in (("name", args.name), ("version", args.version)) if v is not None})
    card.pop("note", None)
    path = write_model_card(args.model, card)
    if args.metrics:
        path = add_card_metrics(args.model, args.metrics, args.split)
    print(f"wrote {path}")
    return 0


def _registry_card(entry) -> str:
    lines = [
        f"# {entry.name} (version {entry.version}) — registry entry, not installed",
        "",
        f"- status: {entry.status()}; archive {entry.url}",
        f"- kind: {entry.kind}; grid {'x'.join(map(str, entry.grid or ()))}; stages {json.dumps(entry.stages)}",
        f"- training data: {entry.training_data}",
        f"- split: {json.dumps(entry.split)}",
        f"- licence: {entry.licence}",
        f"- recipe: {entry.recipe}",
        "",
        "## Held-out metrics",
        "",
        *([f"- {k}: {v}" for k, v in entry.metrics.items()] if entry.metrics else ["- not measured yet"]),
        "",
        "Not a medical device: every implant needs review by a qualified expert before any clinical use.",
    ]
    return "\n".join(lines)


def _done(args: argparse.Namespace, message: str, path: Path, licence: str | None = None) -> None:
    if args.progress == "json":
        result = {"path": str(path)} | ({"licence": licence} if licence is not None else {})
        record = {"stage": "done", "fraction": 1.0, "message": message, "result": result}
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    else:
        print(message)
        if licence is not None:
            print(f"licence: {licence}")
