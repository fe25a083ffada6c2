"""The architecture rules of docs/ARCHITECTURE.md, checked on the import graph (ast, nothing imported).

Rules are allow-lists by ROLE, so a new engine module is covered without editing this file:
1. ``cli/`` imports only the modules a verb needs to parse and print (CLI_MAY_IMPORT), and
   never another verb; only ``cli`` and ``__main__`` import the CLI.
2. Only figure modules, their users (``report``, ``workflows``) and the CLI import a figure
   module or a plotting library; every other module (the engines: trainer, completion,
   evaluation, networks, grid, image, and any new one) imports none.
3. ``SkullVAELib`` never imports ``SkullVAE``, ``SkullVAESlicerLib``, ``slicer``, ``qt`` or ``ctk``.
4. One module owns each vocabulary: defect-class tuples are spelled only in ``config.py``,
   data-set folder names only in ``dataset.py``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "SkullVAELib"

# Rule 1: what a verb may import (docs/ARCHITECTURE.md, "Rules"), besides the standard library.
CLI_MAY_IMPORT = (
    "SkullVAELib.workflows",  # the work
    "SkullVAELib.core.config",  # vocabulary, presets, defaults
    "SkullVAELib.core.errors",
    "SkullVAELib.core.progress",  # tqdm bars / JSON lines
    "SkullVAELib.data.case_ids",  # parse_id_spec's own light module (no SimpleITK: train-refiner on a GPU machine)
    "SkullVAELib.bundle.model_bundle",
    "SkullVAELib.evaluation.table1",
    "SkullVAELib.evaluation.report",
    "SkullVAELib.data.defects",  # CRANIAL_STYLES for --style choices
    "SkullVAELib.vae.plan",  # grid advice in a --grid error message
    "SkullVAELib.models",  # `skullvae models`: the registry and the user's model store
    "SkullVAELib.pipeline.settings",  # complete/evaluate build one CompletionSettings from their flags
)
# A verb that runs other verbs through the dispatcher (`skullvae worker` runs `complete` per request).
DISPATCHING_VERBS = ("SkullVAELib.cli.worker",)
# Rule 2: figure modules, the modules that may use them, and plotting libraries.
FIGURE_MODULES = ("SkullVAELib.evaluation.figures",)
FIGURE_USERS = (*FIGURE_MODULES, "SkullVAELib.evaluation.report", "SkullVAELib.workflows", "SkullVAELib.cli")
PLOTTING = ("matplotlib", "seaborn", "plotly")
ENGINES = (
    "training.loop",
    "vae.completion",
    "evaluation.table1",
    "vae.networks",
    "data.grid",
    "io.image",
)  # named in the rule
# Rule 3
HOST_APP = ("SkullVAE", "SkullVAESlicerLib", "slicer", "qt", "ctk", "PythonQt")


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (function-level imports too).

    ``from SkullVAELib.evaluation import figures`` counts as ``SkullVAELib.evaluation.figures`` when that is a module.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            for alias in node.names:
                if f"{module}.{alias.name}" in library_modules():
                    found.add(f"{module}.{alias.name}")
    return found


def test_the_graph_is_read():
    modules = library_modules()
    assert "SkullVAELib.workflows" in modules and "SkullVAELib.cli.train" in modules
    assert "SkullVAELib.evaluation.figures" in imports_of(modules["SkullVAELib.evaluation.report"])
    assert "SkullVAELib.workflows.train" in imports_of(modules["SkullVAELib.workflows.phantom_demo"])


def cli_verbs() -> set[str]:
    """The verb modules registered in ``cli/__init__.py``'s VERBS (the other cli modules are helpers)."""
    tree = ast.parse((LIB / "cli" / "__init__.py").read_text())
    verbs = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign | ast.Assign) and "VERBS" in ast.unparse(n))
    return {f"SkullVAELib.cli.{ast.literal_eval(v)[0]}" for v in verbs.values}


@pytest.mark.parametrize("name", sorted(n for n in library_modules() if _within(n, ("SkullVAELib.cli",))))
def test_rule1_cli_imports_only_allowed_rooms_and_no_other_verb(name):
    lib = {m for m in imports_of(library_modules()[name]) if _within(m, ("SkullVAELib",)) and m != "SkullVAELib"}
    if name == "SkullVAELib.cli":  # the dispatcher imports verbs by name (importlib), nothing else
        bad = sorted(m for m in lib if not _within(m, ("SkullVAELib.core.errors", "SkullVAELib.core.progress")))
    else:
        helpers = set(library_modules()) - cli_verbs() - {"SkullVAELib.cli"}
        cli_helpers = tuple(m for m in helpers if _within(m, ("SkullVAELib.cli",)))
        may = CLI_MAY_IMPORT + cli_helpers + (("SkullVAELib.cli",) if name in DISPATCHING_VERBS else ())
        bad = sorted(m for m in lib if not _within(m, may))
    assert not bad, f"{name} imports {bad}: move the work into SkullVAELib/workflows/ (docs/ARCHITECTURE.md rule 1)"


def test_rule1_knows_the_verbs():
    assert {"SkullVAELib.cli.train", "SkullVAELib.cli.complete", "SkullVAELib.cli.demo"} <= cli_verbs()
    assert "SkullVAELib.cli.common" not in cli_verbs()


def test_rule1_only_the_cli_imports_the_cli_and_only_cli_or_workflows_import_workflows():
    for name, path in library_modules().items():
        deps = imports_of(path)
        if not _within(name, ("SkullVAELib.cli", "SkullVAELib.__main__")):
            assert not any(_within(m, ("SkullVAELib.cli",)) for m in deps), f"{name} imports the CLI"
        if not _within(name, ("SkullVAELib.cli", "SkullVAELib.workflows")):
            assert not any(_within(m, ("SkullVAELib.workflows",)) for m in deps), f"{name} imports a workflow"


@pytest.mark.parametrize("name", sorted(library_modules()))
def test_rule2_engines_import_no_figure_module(name):
    if _within(name, FIGURE_USERS):
        return
    deps = imports_of(library_modules()[name])
    bad = sorted(m for m in deps if _within(m, FIGURE_MODULES) or m.split(".")[0] in PLOTTING)
    assert not bad, f"{name} imports {bad}: only figures.py draws (docs/ARCHITECTURE.md rule 2)"


def test_rule2_names_real_engines():
    for engine in ENGINES:
        name = f"SkullVAELib.{engine}"
        assert name in library_modules() and not _within(name, FIGURE_USERS)


@pytest.mark.parametrize("name", sorted(library_modules()))
def test_rule3_library_never_imports_the_host_application(name):
    bad = sorted(m for m in imports_of(library_modules()[name]) if m.split(".")[0] in HOST_APP)
    assert not bad, f"{name} imports {bad}: SkullVAELib runs without Slicer (rule 3)"


DEFECT_WORDS = {"auto", "complete", "cranial", "facial"}
FOLDER_NAMES = {"complete_skull", "defective_skull", "facial_defective_skull", "facial_implant"}


def _python_files():
    for root in ("SkullVAELib", "SkullVAE"):
        yield from sorted((REPO / root).rglob("*.py"))


def test_rule4_one_owner_per_vocabulary():
    """Tuples of defect classes only in config.py; folder names only in data/layout.py (docstrings aside)."""
    owners = {
        "tuple": REPO / "SkullVAELib" / "core" / "config.py",
        "folder": REPO / "SkullVAELib" / "data" / "layout.py",
    }
    bad = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts:
                words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(words) == len(node.elts) and {"cranial", "facial"} <= words <= DEFECT_WORDS:
                    if path != owners["tuple"]:
                        bad.append(f"{path.relative_to(REPO)}:{node.lineno} spells {sorted(words)} (use config)")
            elif isinstance(node, ast.Constant) and node.value in FOLDER_NAMES and path != owners["folder"]:
                bad.append(
                    f"{path.relative_to(REPO)}:{node.lineno} spells {node.value!r} (use data.layout.LABEL_FOLDERS)"
                )
    assert not bad, "\n".join(bad)
