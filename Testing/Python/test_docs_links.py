"""The docs' cross-references hold: relative markdown links reach a file, and a section that code or
docs cite by name (``docs/results/issue-24-2026-12-06.md, "A median over rim widths"``) is a heading of that file
(or a bold run-in heading that opens a paragraph).

The results log is split over ``docs/RESULTS.md`` and ``docs/results/issue-*.md`` (issue 24's by date); these checks keep
a later move or rename from leaving a comment or a README line pointing at nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CITING = [
    *MARKDOWN,
    *sorted(p for d in ("SkullVAELib", "SkullVAE", "benchmarks", "tools") for p in (ROOT / d).rglob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.sh")),
]

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CITATION = re.compile(r"(docs/[\w./-]+\.md|results/[\w.-]+\.md),? \(?\"([^\"]{4,200})\"")


def _normalised(text: str) -> str:
    """Lower case, ellipses and comment markers dropped, runs of white space as one blank."""
    text = re.sub(r"\n\s*#+\s*", " ", text).replace("…", " ").replace("...", " ")
    return " ".join(text.lower().split())


def _headings(path: Path) -> list[str]:
    """The file's headings and the bold run-in headings that open a paragraph (``**Batch** ...``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    headings = [line.lstrip("#") for line in lines if line.startswith("#")]
    headings += [line.split("**")[1] for line in lines if line.startswith("**") and line.count("**") >= 2]
    return [_normalised(heading) for heading in headings]


def _resolve_cited(cited: str) -> Path:
    """A citation names a path from the project root (``docs/...``) or from ``docs/`` (``results/...``)."""
    return ROOT / cited if cited.startswith("docs/") else ROOT / "docs" / cited


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file(page: Path) -> None:
    missing = [
        target
        for target in LINK.findall(page.read_text(encoding="utf-8"))
        if "://" not in target and not target.startswith("mailto:") and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_cited_sections_are_headings_of_the_cited_file() -> None:
    broken = []
    for source in CITING:
        for cited, section in CITATION.findall(source.read_text(encoding="utf-8")):
            target = _resolve_cited(cited)
            wanted = _normalised(section)
            if not target.exists() or not any(wanted in heading for heading in _headings(target)):
                broken.append(f"{source.relative_to(ROOT)} -> {cited}: {section!r}")
    assert not broken, "citations of sections that are not there:\n" + "\n".join(broken)


def test_the_citation_pattern_still_finds_citations_of_the_logs() -> None:
    """Guards the check above from passing because its pattern stopped matching anything."""
    cited = {c for source in CITING for c, _ in CITATION.findall(source.read_text(encoding="utf-8"))}
    assert {"docs/results/issue-24-2026-12-06.md", "docs/results/issue-09.md"} <= cited
