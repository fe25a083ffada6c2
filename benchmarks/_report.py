"""Shared helpers of the benchmark scripts: machine description, load average, markdown output.

Every script prints its tables and replaces its own section of ``docs/BENCHMARKS.md``
(between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``), so re-running one script
updates only its part. The section header records the machine, torch, threads, the load
average before and after, and the exact command.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "BENCHMARKS.md"
SKULLFIX = ROOT.parent / "shared" / "data" / "skullfix"
PYTHON = sys.executable

_INTRO = """# SkullVAE benchmarks

Tables written by the scripts in `benchmarks/` (see `benchmarks/README.md`); each section
says the machine, torch version, threads, load average (1/5/15 min, before → after) and the
exact command. Re-running a script replaces its section.
"""


def load_average() -> str:
    """The 1/5/15-minute load averages as "a b c"."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    """lscpu's model name (or platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"Model name:\s*(.+)", out)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_ghz() -> float:
    """Nominal clock in GHz (/proc/cpuinfo "cpu MHz"; 0 when unknown)."""
    try:
        match = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
        return float(match.group(1)) / 1000 if match else 0.0
    except OSError:
        return 0.0


def peak_gflops(cores: int | None = None) -> tuple[float, str]:
    """Estimated float32 peak (GFLOP/s) of ``cores`` cores and the assumption behind it.

    cores × GHz × FLOPs/cycle, with FLOPs/cycle = 2 FMA units × lanes × 2 (multiply + add):
    AVX-512: 16 lanes → 64; AVX2/FMA: 8 lanes → 32; otherwise SSE 4 lanes, 1 unit → 8.
    """
    cores = cores or os.cpu_count() or 1
    flags, ghz = cpu_flags(), cpu_ghz()
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512 (2 FMA units × 16 fp32 lanes × 2)"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2 (2 FMA units × 8 fp32 lanes × 2)"
    else:
        per_cycle, isa = 8, "SSE (4 lanes × 2)"
    peak = cores * ghz * per_cycle
    return (
        peak,
        f"{cores} cores × {ghz:.2f} GHz (nominal, no turbo) × {per_cycle} FLOP/cycle {isa} = {peak:.0f} GFLOP/s",
    )


def environment(threads: int | None = None) -> str:
    """One markdown line describing the machine and software."""
    import torch

    flags = cpu_flags()
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?"
    threads = threads if threads is not None else torch.get_num_threads()
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} CPU cores ({isa}), {cpu_ghz():.2f} GHz nominal; "
        f"Python {platform.python_version()}, torch {torch.__version__}; {threads} torch thread(s)."
    )


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


class Section:
    """Collects the markdown of one script's run and writes it into docs/BENCHMARKS.md."""

    def __init__(self, name: str, title: str, threads: int | None = None) -> None:
        self.name, self.title, self.threads = name, title, threads
        self.load_before = load_average()
        self.started = time.time()
        self.parts: list[str] = []

    def add(self, markdown: str) -> None:
        """Add a table or paragraph (printed at once)."""
        print(markdown, flush=True)
        self.parts.append(markdown.rstrip() + "\n")

    def markdown(self) -> str:
        minutes = (time.time() - self.started) / 60
        head = [
            f"## {self.title}",
            "",
            environment(self.threads),
            f"Load average before → after: {self.load_before} → {load_average()} (run took {minutes:.1f} min; "
            f"{time.strftime('%Y-%m-%d %H:%M')}).",
            "",
            f"Command: `{command_line()}`",
            "",
        ]
        return "\n".join(head) + "\n" + "\n".join(self.parts)

    def write(self, path: Path = BENCHMARKS_MD) -> None:
        """Replace (or append) this section in ``path``, atomically."""
        from SkullVAELib.core.atomic import atomic_write_text

        text = path.read_text() if path.is_file() else _INTRO
        begin, end = f"<!-- bench:{self.name} -->", f"<!-- /bench:{self.name} -->"
        block = f"{begin}\n{self.markdown()}\n{end}"
        if begin in text and end in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        atomic_write_text(path, text)
        print(f"wrote section {self.name!r} of {path}")


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
