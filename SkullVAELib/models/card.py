"""The model card: what a bundle was trained on and how, how well it did, and its licence.

Kept in the bundle as ``model_card.json`` (the facts) and ``model_card.md`` (the same
rendered for people); ``skullvae models info NAME`` prints it. Training writes it
(:func:`write_training_card`), the release recipe adds held-out metrics
(:func:`add_card_metrics`). Bundles without a card get one built from their config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import read_regular_bytes
from SkullVAELib.data.case_ids import format_id_spec

CARD_JSON = "model_card.json"
MAX_CARD_BYTES = 16 << 20
CARD_TEXT = "model_card.md"
DISCLAIMER = (
    "Not a medical device. Research use only: every completed skull and every implant it proposes "
    "needs review and adaptation by a qualified expert before any clinical use."
)
LICENCES = {
    "skullfix": "CC BY-NC-SA 4.0. The weights are derived from SkullFix (CC BY-NC-SA 4.0): non-commercial "
    "research only, share alike, attribute the SkullFix data set.",
    "phantoms": "Apache-2.0 (the project's licence): trained on procedural phantoms only, no patient data.",
    "unknown": "Derived from the training data: check that data's licence before sharing or using these weights.",
}


def data_source(data_roots: list[str], case_ids: list[str]) -> str:
    """ "skullfix", "phantoms" or "unknown", from the data folders and case ids."""
    roots = " ".join(str(r).lower() for r in data_roots)
    ids = [str(c) for c in case_ids]
    if "skullfix" in roots or (ids and all(i.isdigit() and len(i) == 3 and int(i) < 100 for i in ids)):
        return "skullfix"
    if ids and all(i.startswith("phantom_") for i in ids):
        return "phantoms"
    return "unknown"


def training_card(config: dict, data_roots: list[str] | None = None, name: str = "", version: str = "") -> dict:
    """A card from a bundle's config.json (``info`` as written by ``skullvae train``)."""
    info = config.get("info") or {}
    net = config.get("network") or {}
    grid = "×".join(str(g) for g in net.get("grid", [])) or "?"
    ids = list(info.get("train_case_ids") or [])
    source = data_source(list(data_roots or info.get("data_roots") or []), ids)
    stages = [f"stage 1: β-VAE, β = {info.get('beta', '?')}, {info.get('epochs_stage1', '?')} epochs"]
    if config.get("kind") == "aggregated":
        stages.append(
            f"stage 2: decoupled decoder on z ~ q(z|x) ({info.get('stage2_latent', 'sample')}), "
            f"{info.get('epochs_stage2', '?')} epochs"
        )
    seconds = sum(float(info.get(k) or 0) for k in ("stage1_seconds", "stage2_seconds"))
    return {
        "name": name,
        "version": version,
        "kind": config.get("kind", "?"),
        "grid": grid,
        "network": f"channels {net.get('channels')}, latent size {net.get('latent_size')}",
        "training": {
            "data": [str(r) for r in (data_roots or info.get("data_roots") or [])],
            "source": source,
            "case_ids": _id_ranges(ids),
            "volumes": info.get("train_cases"),
            "stages": stages,
            "optimiser": f"Adam, lr {info.get('lr', '?')}, batch {info.get('batch_size', '?')}, seed {info.get('seed', '?')}",
            "device": f"{info.get('device', '?')} × {info.get('world_size', 1)}",
            "wall_minutes": round(seconds / 60, 1) if seconds else None,
            "library_version": info.get("library_version") or config.get("library_version"),
        },
        "metrics": {},
        "licence": LICENCES[source],
        "intended_use": "Research on skull shape completion and cranial/facial implant design.",
        "disclaimer": DISCLAIMER,
    }


def write_model_card(folder: str | os.PathLike, card: dict) -> Path:
    """Write model_card.json and model_card.md into a bundle folder (atomically); returns the .md."""
    folder = Path(folder)
    card = {**card, "disclaimer": DISCLAIMER}
    atomic_write_text(folder / CARD_JSON, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(folder / CARD_TEXT, render_model_card(card))
    return folder / CARD_TEXT


def write_training_card(folder: str | os.PathLike, data_roots: list[str] | None = None) -> Path:
    """Card of a freshly trained bundle (call after ``bundle.save(folder)``); keeps metrics of an older card."""
    folder = Path(folder)
    card = training_card(_read(folder / "config.json"), data_roots)
    old = folder / CARD_JSON
    if old.is_file():
        previous = _read(old)
        card.update({k: previous[k] for k in ("name", "version") if previous.get(k)})
    return write_model_card(folder, card)


def read_model_card(folder: str | os.PathLike) -> dict:
    """The bundle's card; built from config.json when the bundle has none (older bundles)."""
    folder = Path(folder)
    if os.path.lexists(folder / CARD_JSON):  # a FIFO or device there is refused by _read, not skipped
        return _read(folder / CARD_JSON)
    if not (folder / "config.json").is_file():
        raise SkullVAEError("not a SkullVAE model bundle (no config.json)", folder)
    card = training_card(_read(folder / "config.json"))
    card["note"] = "This bundle has no model card; these facts come from its config.json."
    return card


def add_card_metrics(folder: str | os.PathLike, summary: dict | str | os.PathLike, split: str = "") -> Path:
    """Put held-out metrics (an ``evaluate`` summary.json, or its dict) into the bundle's card."""
    if not isinstance(summary, dict):
        summary = _read(Path(summary))
    card = read_model_card(folder)
    card.pop("note", None)
    card["metrics"] = metrics_from_summary(summary, split)
    return write_model_card(folder, card)


def metrics_from_summary(summary: dict, split: str = "") -> dict:
    """Held-out numbers a user cares about, from ``skullvae evaluate``'s summary.json."""
    test_ids = [str(i) for i in summary.get("test_ids") or []]
    metrics: dict = {"split": split or f"test {_id_ranges(test_ids)}", "test_cases": len(test_ids)}
    kept = ((summary.get("table1") or {}).get("original_kept") or {}).get("cmp") or {}
    for label, value in kept.items():
        metrics[f"{label} completed skull DSC (mean)"] = _round(value)
    for label, values in (summary.get("implant") or {}).items():
        for key, name in (("dsc", "implant DSC"), ("bdsc", "implant bDSC 10 mm"), ("hd95_mm", "implant HD95 mm")):
            stats = values.get(key) or {}
            metrics[f"{label} {name} (median)"] = _median(stats)
    accuracy = (summary.get("classification") or {}).get("accuracy")
    if accuracy is not None:
        metrics["defect type chosen correctly"] = _round(accuracy)
    return metrics


def render_model_card(card: dict) -> str:
    """The card as Markdown text (also what ``skullvae models info`` prints)."""
    title = card.get("name") or "SkullVAE model"
    version = f" (version {card['version']})" if card.get("version") else ""
    train = card.get("training") or {}
    lines = [f"# {title}{version}", "", f"> {card.get('disclaimer', DISCLAIMER)}", ""]
    if card.get("note"):
        lines += [f"_{card['note']}_", ""]
    lines += [
        f"- Kind: {card.get('kind', '?')} VAE; model grid {card.get('grid', '?')} voxels; {card.get('network', '')}",
        f"- Intended use: {card.get('intended_use', '')}",
        "",
        "## Training data and how it was trained",
        "",
        f"- Data: {', '.join(train.get('data') or []) or 'not recorded'} (source: {train.get('source', '?')})",
        f"- Cases: {train.get('case_ids') or 'not recorded'} ({train.get('volumes', '?')} volumes)",
    ]
    lines += [f"- {s}" for s in train.get("stages") or []]
    lines += [
        f"- {train.get('optimiser', '')}; device {train.get('device', '?')}"
        + (f"; {train['wall_minutes']} min" if train.get("wall_minutes") else ""),
        f"- SkullVAE version {train.get('library_version', '?')}",
        "",
        "## Held-out metrics",
        "",
    ]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += [f"- {k}: {v}" for k, v in metrics.items()]
    else:
        lines += ["- none recorded (run `skullvae evaluate` on held-out cases, then `skullvae models card`)"]
    lines += ["", "## Licence", "", card.get("licence", LICENCES["unknown"]), ""]
    return "\n".join(lines)


def _id_ranges(ids: list[str]) -> str:
    """["000", "001", "002", "007"] -> "000-002, 007": a card's case ids (at most 6 non-numeric ones)."""
    return format_id_spec(ids, most=6)


def _median(stats: dict):
    """A summary's median for the card. ``evaluate``'s median is over the finite values; with infinite
    ones (HD95 of an empty prediction) the card says so: the true median is inf when at least half the
    cases are infinite, otherwise the finite median is given with how many cases were left out."""
    n, n_inf = stats.get("n"), stats.get("n_infinite")
    if not isinstance(n_inf, int) or n_inf <= 0 or not isinstance(n, int) or n <= 0:
        return _round(stats.get("median"))
    why = f"{n_inf} of {n} cases infinite: empty prediction"
    if 2 * n_inf >= n:
        return f"inf ({why})"
    return f"{_round(stats.get('median'))} over the {n - n_inf} finite cases ({why})"


def _round(value):
    return round(float(value), 4) if isinstance(value, int | float) else value


def _read(path: Path) -> dict:
    try:
        doc = json.loads(read_regular_bytes(path, MAX_CARD_BYTES, "JSON file").decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SkullVAEError(f"cannot read JSON ({exc})", path) from None
    if not isinstance(doc, dict):
        raise SkullVAEError("expected a JSON object", path)
    return doc
