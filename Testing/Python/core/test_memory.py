"""keep_freed_memory: glibc's mallopt applied (Linux), or nothing; always in a child process here,
so that the test session's own allocator is left as it is."""

import os
import subprocess
import sys

import pytest

CODE = "from SkullVAELib.core.memory import keep_freed_memory; print(keep_freed_memory())"


def _run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("SKULLVAE_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["SKULLVAE_KEEP_FREED_MEMORY"] = env_value
    return subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_applied_on_linux_and_switched_off_by_the_environment():
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _run(None) == expected
    assert _run("0") == "False"


def test_only_a_process_of_its_own_asks_for_it(tmp_path, monkeypatch):
    """The CLI applies it when it is the process's entry (main() without argv), not when called in-process."""
    import SkullVAELib.workflows.complete_batch as complete_batch
    from SkullVAELib.cli import main

    calls = []
    monkeypatch.setattr(complete_batch, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["complete", "--input", str(tmp_path / "missing.nrrd"), "--output", str(tmp_path / "o.seg.nrrd")]) == 2
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["skullvae", "complete", "--input", str(tmp_path / "missing.nrrd"), "--output",
                                      str(tmp_path / "o.seg.nrrd")])  # fmt: skip
    assert main() == 2
    assert calls == [1]
