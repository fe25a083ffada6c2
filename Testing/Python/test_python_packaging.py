"""A non-editable install (a wheel) ships every module of SkullVAELib and the model registry.

The wheel is built from a copy of the sources the build reads (pyproject.toml, README.md,
SkullVAELib/), without network or build isolation, and imported with ``-S`` (no site
hooks, so the editable install of the test venv cannot answer instead of the wheel).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, cmake_set

from SkullVAELib.models.registry import default_registry_path

REPO = Path(__file__).resolve().parents[2]
ROOT_CMAKE = REPO_ROOT / "CMakeLists.txt"
PACKAGE = REPO / "SkullVAELib"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_registry_is_package_data_of_skullvaelib():
    path = default_registry_path()
    assert path.is_file() and PACKAGE in path.parents, f"{path} is not inside {PACKAGE}"
    package = ".".join(path.parent.relative_to(REPO).parts)
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]
    assert path.name in package_data.get(package, []), f"pyproject.toml: package-data {package!r} must name {path.name}"
    assert path.relative_to(REPO).as_posix() in cmake_set(ROOT_CMAKE, "SKULLVAE_PYTHON_RESOURCES")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:  # setuptools >= 70.1 builds wheels on its own
        pytest.skip("setuptools is needed to build the wheel without network")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "SkullVAELib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*command, "-w", str(root / "dist"), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (built,) = (root / "dist").glob("skullvae-*.whl")
    return built


def test_wheel_ships_every_module_and_the_registry(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py")}
    expected.add(default_registry_path().relative_to(REPO).as_posix())
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing} (pyproject.toml packages / package-data)"


def test_installed_wheel_reads_its_registry(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    code = (
        "import SkullVAELib.workflows, SkullVAELib.training.loop\n"
        "from SkullVAELib.models.registry import default_registry_path, load_registry\n"
        "print(SkullVAELib.__file__); print(default_registry_path()); print(len(load_registry().entries))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    env.pop("SKULLVAE_REGISTRY", None)
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    module, registry, entries = done.stdout.split()
    assert Path(module).is_relative_to(site) and Path(registry).is_relative_to(site)
    assert int(entries) > 0


def test_console_script_resolves_in_the_installed_wheel(wheel, tmp_path):
    """``skullvae`` (pyproject [project.scripts]) names a callable that the installed wheel has."""
    archive = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
    lines = archive.read(entry_points).decode().splitlines()
    scripts = lines[lines.index("[console_scripts]") + 1 :]
    target = dict(line.replace(" ", "").split("=", 1) for line in scripts if "=" in line)["skullvae"]
    assert target == _pyproject()["project"]["scripts"]["skullvae"]
    module, attribute = target.split(":")
    site = tmp_path / "site"
    archive.extractall(site)
    code = f"import sys, {module} as m; sys.argv = ['skullvae', '--version']; sys.exit(m.{attribute}())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(importlib.import_module("SkullVAELib").__version__), done.stdout
