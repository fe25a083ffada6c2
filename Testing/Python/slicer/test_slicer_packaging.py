"""The extension's CMake lists ship every Python file and resource, and nothing that is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import cmake_set

REPO = Path(__file__).resolve().parents[3]
ROOT_CMAKE = REPO / "CMakeLists.txt"
MODULE_CMAKE = REPO / "SkullVAE" / "CMakeLists.txt"


def test_every_library_file_is_packaged():
    listed = cmake_set(ROOT_CMAKE, "SKULLVAELIB_PYTHON_SCRIPTS")
    on_disk = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "SkullVAELib").rglob("*.py"))
    missing = sorted(set(on_disk) - set(listed))
    assert not missing, f"add to SKULLVAELIB_PYTHON_SCRIPTS in CMakeLists.txt: {missing}"


def test_every_module_file_is_packaged():
    """Every .py under SkullVAE/ ships, except the developer's Testing/ (a benchmark, not run by Slicer)."""
    listed = cmake_set(MODULE_CMAKE, "MODULE_PYTHON_SCRIPTS")
    module_dir = REPO / "SkullVAE"
    on_disk = sorted(p.relative_to(module_dir).as_posix() for p in module_dir.rglob("*.py"))
    on_disk = [f for f in on_disk if not f.startswith("Testing/")]
    assert {"SkullVAE.py", "Scripts/batch.py", "SkullVAESlicerLib/install.py"} <= set(on_disk)
    missing = sorted(set(on_disk) - set(listed))
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in SkullVAE/CMakeLists.txt: {missing}"


@pytest.mark.parametrize(
    "cmake, variable, base",
    [
        (ROOT_CMAKE, "SKULLVAELIB_PYTHON_SCRIPTS", REPO),
        (ROOT_CMAKE, "SKULLVAE_PYTHON_RESOURCES", REPO),
        (MODULE_CMAKE, "MODULE_PYTHON_SCRIPTS", REPO / "SkullVAE"),
    ],
)
def test_every_listed_file_exists(cmake, variable, base):
    listed = cmake_set(cmake, variable)
    assert listed
    missing = [f for f in listed if not (base / f).is_file()]
    assert not missing, f"{cmake.name} {variable} lists files that do not exist: {missing}"
    assert not [f for f in listed if f.startswith("..")], "paths outside the CMake folder do not install"


def test_resources_packaged_and_valid():
    listed = cmake_set(ROOT_CMAKE, "SKULLVAE_PYTHON_RESOURCES")
    assert {
        "Resources/Icons/SkullVAE.png",
        "Resources/UI/SkullVAE.ui",
        "Resources/requirements.txt",
        "SkullVAELib/models/models.json",  # the model registry: package data, beside registry.py
    } <= set(listed)
    import matplotlib.image

    icon = matplotlib.image.imread(REPO / "Resources" / "Icons" / "SkullVAE.png")
    assert icon.shape[:2] == (128, 128)


def test_requirements_never_pin_or_reinstall_slicer_packages():
    lines = [
        line.split("#", 1)[0].strip()
        for line in (REPO / "Resources" / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert lines
    for line in lines:
        name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower()
        assert name not in {"simpleitk", "numpy", "vtk", "torch"}, line
        assert "==" not in line, f"do not pin with ==: {line}"


def test_root_cmake_is_a_slicer_extension():
    text = ROOT_CMAKE.read_text()
    for needed in (
        "EXTENSION_HOMEPAGE",
        'EXTENSION_CATEGORY "Segmentation"',
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        'EXTENSION_DEPENDS "PyTorch"',
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(SkullVAE)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needed in text, needed
    assert "slicerMacroBuildScriptedModule" in MODULE_CMAKE.read_text()


def test_no_import_time_dependency_installs():
    """Installing packages happens only in install.py, on request, never at import."""
    for path in (REPO / "SkullVAE").rglob("*.py"):
        text = path.read_text()
        if path.name != "install.py":
            assert "pip_install(" not in text and "pip_ensure(" not in text, path
        assert "import torch" not in text.split("def ", 1)[0], f"{path}: torch imported at module level"


def test_helper_package_has_no_import_cycle():
    """SkullVAESlicerLib's modules import each other without a cycle (logic.py <-> models.py was one)."""
    import ast

    package = REPO / "SkullVAE" / "SkullVAESlicerLib"
    graph = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    imported.add(node.module.split(".")[0])
                else:
                    imported.update(alias.name for alias in node.names)
        graph[path.stem] = imported & {p.stem for p in package.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"import cycle through {cycles}: {graph}"
