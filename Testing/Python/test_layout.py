"""The package tree reads as the flow (docs/ARCHITECTURE.md, rules 5-8), checked on the import graph.

5. Layers: a package imports only packages below it (function-level imports too):
   core < io < data < training < implant < vae < bundle < models < pipeline < evaluation < workflows < cli.
6. One owner of the pipeline: the implant sources' engines are imported only inside ``implant/``,
   by ``pipeline/`` (which assembles them) and by ``bundle/folder`` (which loads their parts).
7. Size: at most 10 modules at the package root, files under 400 lines, functions under 80 lines.
8. No import circles between library modules.
"""

from __future__ import annotations

import ast

import pytest
from test_architecture import LIB, REPO, _within, imports_of, library_modules

LAYERS = (
    "core", "io", "data", "training", "implant", "vae", "bundle", "models", "pipeline", "evaluation", "workflows", "cli",
)  # fmt: skip
ROOT_MODULES = {"SkullVAELib", "SkullVAELib.__main__"}
PIPELINE_ENGINES = (
    "SkullVAELib.implant.sources",
    "SkullVAELib.implant.rimfit",
    "SkullVAELib.implant.atlas.fill",
    "SkullVAELib.implant.learned.infer",
    "SkullVAELib.implant.postprocess",
    "SkullVAELib.implant.check",
)
PIPELINE_OWNERS = ("SkullVAELib.implant", "SkullVAELib.pipeline", "SkullVAELib.bundle.folder")
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_ROOT_MODULES = 400, 80, 10


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_package_has_a_layer():
    packages = {n.split(".")[1] for n in library_modules() if n not in ROOT_MODULES}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


@pytest.mark.parametrize("name", sorted(library_modules()))
def test_rule5_a_package_imports_only_lower_layers(name):
    own = layer(name)
    if own is None:
        return
    bad = sorted(
        m for m in imports_of(library_modules()[name]) if layer(m) and LAYERS.index(layer(m)) > LAYERS.index(own)
    )
    assert not bad, f"{name} ({own}) imports the higher layer(s) {bad} (docs/ARCHITECTURE.md rule 5)"


@pytest.mark.parametrize("name", sorted(library_modules()))
def test_rule6_only_the_pipeline_assembles_the_implant_sources(name):
    if _within(name, PIPELINE_OWNERS):
        return
    bad = sorted(m for m in imports_of(library_modules()[name]) if _within(m, PIPELINE_ENGINES))
    assert not bad, f"{name} imports {bad}: build a Completer (SkullVAELib.pipeline) instead (rule 6)"


def test_rule7_sizes():
    root = [p for p in LIB.glob("*.py")]
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the package root"
    long_files, long_functions = [], []
    for path in sorted(LIB.rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(REPO)} ({len(source.splitlines())} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def test_rule8_no_import_circles():
    modules = library_modules()
    graph = {n: {m for m in imports_of(p) if m in modules and m != n} for n, p in modules.items()}
    # a package's __init__ that only re-exports its own modules is not a cycle partner of them
    graph = {
        n: {m for m in deps if not (n.startswith(m + ".") and modules[m].name == "__init__.py")}
        for n, deps in graph.items()
    }
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"
