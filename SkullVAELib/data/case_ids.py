"""Case-id lists ("064-079", "000,003,010-012", a file of ids): light, no imaging imports, so
the refiner's trainer parses ids on a GPU machine that has torch alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError

MAX_IDS = 100_000  # case ids in one list: data sets hold hundreds


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes "²" (which ``int`` refuses) and "٣" (Arabic-Indic)."""
    return text.isascii() and text.isdigit()


def parse_id_spec(spec: str | Sequence[str] | None) -> list[str] | None:
    """Case ids from "064-079", "000,003,010-012", a file with one id (or range) per line,
    or a list of such; None stays None. Order kept, duplicates dropped.

    Ranges keep the zero padding of their first bound ("064-079" → "064" … "079").
    """
    if spec is None:
        return None
    parts = [spec] if isinstance(spec, str) else list(spec)
    if len(parts) == 1 and Path(str(parts[0])).is_file():
        lines = Path(str(parts[0])).read_text(encoding="utf-8").splitlines()
        parts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    ids: list[str] = []
    for part in parts:
        for item in str(part).split(","):
            item = item.strip()
            if not item:
                continue
            if any(c.isdigit() and not c.isascii() for c in item):
                raise SkullVAEError(f"case id {item!r} holds a digit that is not 0-9; write ids with ASCII digits")
            lo, sep, hi = item.partition("-")
            if sep and _is_number(lo) and _is_number(hi):
                if int(hi) < int(lo):
                    raise SkullVAEError(f"id range {item!r} runs backwards")
                if int(hi) - int(lo) + 1 + len(ids) > MAX_IDS:  # counted before anything is expanded
                    raise SkullVAEError(f"id range {item!r} holds over {MAX_IDS:,} case ids; not a data set's")
                width = len(lo)
                ids += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
            else:
                ids.append(item)
    if not ids:
        raise SkullVAEError(f"no case ids in {spec!r}")
    return list(dict.fromkeys(ids))


def format_id_spec(ids: Iterable[str], most: int | None = None) -> str:
    """The compact text of case ids, the inverse of :func:`parse_id_spec` for display:
    ["000", "001", "002", "007", "abc"] → "000-002, 007, abc" ("" for none).

    Numeric ids join runs of consecutive numbers (each keeps its own zero padding) in numeric
    order, every run listed; other ids (file names) follow, sorted, at most ``most`` of them, then
    "and N more".
    """
    unique = set(ids)
    numeric = sorted((i for i in unique if _is_number(i)), key=lambda i: (int(i), i))
    parts: list[str] = []
    start = prev = None
    for i in numeric:
        if prev is not None and int(i) == int(prev) + 1:
            prev = i
            continue
        if start is not None:
            parts.append(start if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(start if start == prev else f"{start}-{prev}")
    other = sorted(i for i in unique if not _is_number(i))
    if most is not None and len(other) > most:
        other = [*other[:most], f"and {len(other) - most} more"]
    return ", ".join(parts + other)
