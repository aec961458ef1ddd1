"""No import cycle among ``src/headrace`` modules: every import counts, typing-only and function-local included.

The layering (core → io → formats → stages → plan → pipeline → loader → integrations) holds only if no
module imports, however indirectly, one that imports it back. A cycle hidden behind
``if TYPE_CHECKING:`` or inside a function still ties two modules together (one cannot be read,
typed or moved without the other), so the walk below parses every module with :mod:`ast` and counts
all of them. A failure names each cycle and, for every step, the line and kind of the import.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

Edges = dict[str, dict[str, tuple[int, str]]]  # module -> imported module -> (line, kind)


def modules(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``src`` by dotted name (a package by its own name, not ``__init__``)."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _kind(stack: list[ast.AST]) -> str:
    if any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) for n in stack):
        return "function-local"
    if any(isinstance(n, ast.If) and _type_checking(n.test) for n in stack):
        return "typing-only"
    return "top-level"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The known modules an import statement loads (``from a import b`` loads ``a.b`` when that is a module)."""

    def owner(name: str) -> str | None:  # the longest known module that ``name`` starts with
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, base] if base else here)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    return sorted({o for o in map(owner, names) if o is not None and o != module})


def import_graph(src: Path, package: str) -> Edges:
    """Which modules of ``package`` each of its modules imports, with the first line and kind of that import."""
    known = modules(src, package)
    graph: Edges = {}
    for module, path in known.items():
        edges: dict[str, tuple[int, str]] = {}
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, stack: list[ast.AST]) -> None:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, module, is_package, known):  # noqa: B023 - used at once
                    edges.setdefault(target, (node.lineno, _kind(stack)))  # noqa: B023
            for child in ast.iter_child_nodes(node):
                visit(child, [*stack, node])

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), [])
        graph[module] = edges
    return graph


def cycles(graph: Edges) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules, each from its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_shortest_loop(graph, group) for group in groups)


def _shortest_loop(graph: Edges, group: list[str]) -> list[str]:
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no loop through {start}")  # a strongly connected group always has one


def describe(graph: Edges, loop: list[str]) -> str:
    steps = [f"{a} -> {b} (line {graph[a][b][0]}, {graph[a][b][1]})" for a, b in itertools.pairwise(loop)]
    return " -> ".join(loop) + "\n    " + "\n    ".join(steps)


def test_no_import_cycle_among_headrace_modules() -> None:
    graph = import_graph(SRC, "headrace")
    found = cycles(graph)
    assert not found, "import cycles (break them with a Protocol or by moving the shared piece down a layer):\n" + (
        "\n".join(describe(graph, loop) for loop in found)
    )


def test_plan_and_split_know_the_pipeline_only_as_an_upstream() -> None:
    graph = import_graph(SRC, "headrace")
    assert "headrace.pipeline" not in graph["headrace.plan"]
    assert "headrace.pipeline" not in graph["headrace.stages.split"]
    assert graph["headrace.pipeline"]["headrace.plan"][1] == "top-level"  # the walk sees the edges it should


def test_the_walk_names_a_cycle_through_a_typing_only_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ..c import C\n")
    (pkg / "c.py").write_text("def f():\n    from . import a\n")
    (pkg / "d.py").write_text("import pkg.c\n")  # imports into the cycle, is not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {},
        "pkg.a": {"pkg.sub.b": (1, "top-level")},
        "pkg.c": {"pkg.a": (2, "function-local")},
        "pkg.d": {"pkg.c": (1, "top-level")},
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.c": (4, "typing-only")},
    }
    loops = cycles(graph)
    assert loops == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert describe(graph, loops[0]) == (
        "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a\n"
        "    pkg.a -> pkg.sub.b (line 1, top-level)\n"
        "    pkg.sub.b -> pkg.c (line 4, typing-only)\n"
        "    pkg.c -> pkg.a (line 2, function-local)"
    )
