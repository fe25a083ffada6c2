"""The README's quick start and CI must not drift apart: CI runs command 2 as written."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def _quick_start_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("skullvae demo")
    assert "pytest" in commands[1]


def test_ci_runs_readme_command_two_verbatim():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _quick_start_commands()[1] in ci.splitlines()


def test_installs_never_pull_an_unpinned_torch_first():
    for command in _quick_start_commands():
        steps = command.split("&&")
        torch_steps = [i for i, s in enumerate(steps) if "torch==" in s]
        project_steps = [i for i, s in enumerate(steps) if "pip install" in s and "-e" in s]
        assert torch_steps and project_steps and torch_steps[0] < project_steps[0]
