"""The package's import graph: no cycles, and dependencies point down the chain.

The graph is read from the source with ``ast`` (every ``import`` in a module, also inside
functions — a deferred import is still a dependency — except under ``if TYPE_CHECKING:``), so a
cycle fails here even when deferring the import would hide it at run time.
"""

from __future__ import annotations

import ast
import functools
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "workbench"

# Lower layers never import higher ones (same layer: allowed, cycles aside). The chain of
# ../shared/DESIGN.md: config -> backends/load/metrics/traces -> stats -> analysis -> experiments ->
# suite/report -> cli, with the leaves everyone uses at the bottom.
LAYERS: dict[str, int] = {
    "workbench": 0,  # __version__ only
    "workbench.errors": 0,
    "workbench.units": 0,
    "workbench.tools": 0,
    "workbench.report.plots": 0,  # plotly house style: used by analysis and experiments figures
    "workbench.config.problems": 0,  # any YAML file against any model, file:line errors (topologies too)
    "workbench.config.yamlload": 0,
    "workbench.audit": 1,  # every change a backend makes is recorded
    "workbench.metrics": 2,
    "workbench.load": 2,
    "workbench.traces": 2,
    "workbench.backends": 2,
    "workbench.config": 3,  # composes the types of the layers it feeds
    "workbench.stats": 3,
    "workbench.analysis": 4,
    "workbench.experiments": 5,
    "workbench.report": 6,
    "workbench.suite": 6,
    "workbench.cli": 7,
}
# config sits above what it feeds: nothing it configures may import it
NEVER_IMPORTS_CONFIG = ("workbench.backends", "workbench.load", "workbench.metrics", "workbench.stats",
                        "workbench.traces", "workbench.analysis", "workbench.audit")  # fmt: skip


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of ``known`` that the module ``name`` imports (resolved to submodules when
    ``from pkg import sub`` names one)."""
    tree = ast.parse(source)
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known) - {name}
        for name, path in files.items()
    }


@functools.cache
def package_graph() -> dict[str, set[str]]:
    """The workbench package's graph, read once per test run."""
    return import_graph(PACKAGE)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int:
    best = ""
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return LAYERS[best]


def test_no_import_cycle_inside_the_package() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_dependencies_point_down_the_chain() -> None:
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, deps in package_graph().items()
        for b in deps
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_config_sits_above_what_it_feeds() -> None:
    bad = [
        f"{a} imports {b}"
        for a, deps in package_graph().items()
        if a.startswith(NEVER_IMPORTS_CONFIG)
        for b in deps
        if b == "workbench.config" or b.startswith("workbench.config.schema")
    ]
    assert not bad, "\n".join(bad)


def test_the_cycle_test_fails_on_a_cycle_even_a_deferred_one(tmp_path: Path) -> None:
    pkg = tmp_path / "workbench"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("from workbench.cli import run\nout = print\n")
    (pkg / "cli" / "run.py").write_text(
        textwrap.dedent(
            """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from workbench.config import Config  # not a run-time import: ignored
            def run():
                from workbench.cli import out  # deferred, still a cycle
                out("hi")
            """
        )
    )
    assert find_cycle(import_graph(pkg)) == ["workbench.cli", "workbench.cli.run", "workbench.cli"]
    (pkg / "cli" / "run.py").write_text("def run():\n    print('hi')\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize(
    ("module", "layer"),
    [("workbench.report.plots", 0), ("workbench.report.html", 6), ("workbench.cli.run", 7)],
)
def test_layer_lookup_takes_the_longest_prefix(module: str, layer: int) -> None:
    assert layer_of(module) == layer
