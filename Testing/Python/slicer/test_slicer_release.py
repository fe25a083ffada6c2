"""Ready for Slicer's Extensions Index, with a true version floor: LICENSE, the index entry, the CMake
fields' URLs (files of this repository at its stated future location), the self-test registered
with ctest, and the minimum Python checked statically (vermin) and stated the same in the README."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cmake_set

REPO = Path(__file__).resolve().parents[3]
ROOT_CMAKE = REPO / "CMakeLists.txt"
MODULE_CMAKE = REPO / "SkullVAE" / "CMakeLists.txt"
INDEX_ENTRY = REPO / "ExtensionsIndex" / "SkullVAE.json"
REPOSITORY = "https://github.com/skullvae/SlicerSkullVAE"  # the stated future location (ExtensionsIndex/README.md)
RAW = "https://raw.githubusercontent.com/skullvae/SlicerSkullVAE/main/"


def cmake_field(name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', ROOT_CMAKE.read_text())
    assert match, name
    return match.group(1)


def module_constant(name: str):
    tree = ast.parse((REPO / "SkullVAE" / "SkullVAE.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not in SkullVAE.py")


# --- licence ---------------------------------------------------------------------------------
def test_licence_is_apache_2_as_pyproject_says():
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert 'license = { text = "Apache-2.0" }' in (REPO / "pyproject.toml").read_text()


# --- the index entry (Slicer's catalog entry schema v1.0.2) -------------------------------------
SCHEMA_KEYS = {
    "$schema": str,
    "category": str,
    "scm_url": str,
    "scm_revision": str,
    "scm_type": str,
    "build_dependencies": list,
    "dicom_support_rule": str,
    "build_subdirectory": str,
    "enabled": bool,
    "tier": int,
}


def test_index_entry_follows_the_catalog_schema_and_agrees_with_cmake():
    entry = json.loads(INDEX_ENTRY.read_text())
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert {"$schema", "category", "scm_url"} <= set(entry)  # required
    assert set(entry) <= set(SCHEMA_KEYS)  # additionalProperties: false
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_KEYS[key]), key
    assert entry["scm_type"] in ("git", "local") and 1 <= entry["tier"] <= 5
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert entry["category"] == cmake_field("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_field("EXTENSION_DEPENDS").split()
    assert entry["scm_url"] == REPOSITORY and cmake_field("EXTENSION_HOMEPAGE").startswith(REPOSITORY)


def test_cmake_urls_name_files_of_this_repository():
    urls = [cmake_field("EXTENSION_ICONURL"), *cmake_field("EXTENSION_SCREENSHOTURLS").split()]
    assert len(urls) >= 3  # the icon and at least two images of a real completion
    for url in urls:
        assert url.startswith(RAW), url
        path = REPO / url[len(RAW) :]
        assert path.is_file() and path.stat().st_size < 300_000, url
    assert "matplotlib" not in " ".join(urls) and "screenshot.png" not in " ".join(urls)
    readme = (REPO / "README.md").read_text()
    for url in urls[1:]:  # the README shows the same images
        assert url[len(RAW) :] in readme, url


def test_description_names_what_runs_without_a_model():
    text = cmake_field("EXTENSION_DESCRIPTION")
    assert "not a medical device" in text and "without a trained model" in text


def test_sample_data_ships_with_the_extension():
    resources = cmake_set(ROOT_CMAKE, "SKULLVAE_PYTHON_RESOURCES")
    assert "Resources/SampleData/SkullVAE-phantom-cranial-defect.nrrd" in resources


# --- the self-test is a Slicer Python unit test ----------------------------------------------------
def test_self_test_registered_with_ctest():
    text = re.sub(r"#[^\n]*", "", MODULE_CMAKE.read_text())
    assert re.search(r"if\(BUILD_TESTING\)\s*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)
    tree = ast.parse((REPO / "SkullVAE" / "SkullVAE.py").read_text())
    test = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SkullVAETest")
    methods = {n.name for n in test.body if isinstance(n, ast.FunctionDef)}
    assert {"setUp", "runTest", "test_PhantomWithoutModel"} <= methods


# --- the version floor -----------------------------------------------------------------------------
def _vermin() -> list[str]:
    exe = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    assert exe, "vermin is missing: pip install -e '.[test]' (it checks the Python floor)"
    return [exe, "--no-tips", "--violations", "-t={}.{}-".format(*module_constant("MINIMUM_PYTHON"))]


def test_library_and_module_run_on_the_stated_python():
    """Static check (no 3.9/3.10 interpreter needed): nothing in SkullVAELib/ or SkullVAE/ needs a
    newer Python than MINIMUM_PYTHON."""
    run = subprocess.run([*_vermin(), "SkullVAELib", "SkullVAE"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_checker_catches_a_newer_feature(tmp_path):
    (tmp_path / "new.py").write_text("import tomllib\n")  # Python 3.11
    run = subprocess.run([*_vermin(), str(tmp_path / "new.py")], capture_output=True, text=True)
    assert run.returncode != 0 and "tomllib" in run.stdout


def test_old_slicer_gets_one_clear_message():
    source = (REPO / "SkullVAE" / "SkullVAE.py").read_text()
    ast.parse(source, feature_version=(3, 9))  # Slicer 5.8's Python parses the file, so the check runs
    head = source.split("if UNSUPPORTED:", 1)[0]
    assert "SkullVAELib" not in head.split('"""', 2)[2] and "import slicer" not in head  # checked first
    namespace: dict = {}
    exec(compile(head, "SkullVAE.py", "exec"), namespace)
    message = namespace["unsupportedMessage"]((3, 9, 18))
    assert "3D Slicer 5.10 or newer" in message and "Python 3.9" in message and "\n" not in message
    assert namespace["unsupportedMessage"]((3, 12, 0)) is None and namespace["unsupportedMessage"]((3, 10)) is None


def test_readme_and_packaging_state_the_same_floor():
    slicer_floor, python_floor = module_constant("MINIMUM_SLICER"), module_constant("MINIMUM_PYTHON")
    readme = (REPO / "README.md").read_text()
    stated = set(re.findall(r"3D Slicer (\d+\.\d+) or newer", readme))
    assert stated == {slicer_floor}, stated
    assert f"Python {python_floor[0]}.{python_floor[1]}" in readme
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'requires-python = ">={python_floor[0]}.{python_floor[1]}"' in pyproject
    assert f'target-version = "py{python_floor[0]}{python_floor[1]}"' in pyproject
    assert "Slicer 5.4" not in readme and "5.4 or newer" not in readme


@pytest.mark.parametrize("name", ["skullvae-3d.png", "skullvae-slices.png"])
def test_readme_images_are_small_pngs(name):
    data = (REPO / "docs" / "images" / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 300_000
