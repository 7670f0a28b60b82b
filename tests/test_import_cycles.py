"""No import cycle anywhere in ``bitconvert/``, lazy (function-level) imports included.

The graph is built from the source text (every ``import`` / ``from`` statement, wherever it sits), not
from what happens to be imported at run time, so a cycle hidden inside a function still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bitconvert"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root`` (a package's name is its __init__)."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute package a ``from`` statement names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports, by any statement anywhere in its file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                # ``from pkg import name`` imports the submodule pkg.name when there is one, else pkg itself
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != module}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = module_names(root)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion depth should not matter)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                components.append(sorted(comp))
    return components


def a_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One shortest cycle through the first member of a strongly connected component: a -> b -> ... -> a."""
    inside, start = set(members), members[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & inside):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{members} is not a cycle")


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # sanity: the checker must see edges it is meant to see, or the real test below could not fail
    assert "bitconvert.errors" in graph["bitconvert.io.staging"]  # top-level relative import
    assert any(graph.values()) and len(graph) > 20


def test_checker_finds_a_lazy_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n")
    graph = import_graph(pkg)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert cycles == [["pkg.a", "pkg.sub.b"]]
    assert a_cycle(graph, cycles[0]) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_checker_counts_a_package_importing_its_submodule_and_back(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import thing\n")
    (pkg / "core.py").write_text("import pkg\nthing = 1\n")
    cycles = [c for c in strongly_connected(import_graph(pkg)) if len(c) > 1]
    assert cycles == [["pkg", "pkg.core"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    described = [" -> ".join(a_cycle(graph, c)) for c in cycles]
    assert not cycles, "import cycles in bitconvert/:\n" + "\n".join(described)
