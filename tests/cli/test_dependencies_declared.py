"""pyproject.toml declares what is imported and nothing that is not: every third-party module the
package imports (lazy imports included) comes from a declared dependency or extra, every runtime
dependency is imported by the package, and the ``test`` extra (with what it pulls in) installs every
module the tests import."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
from packaging.requirements import Requirement  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: installed module -> the distributions that provide it
PROVIDERS = metadata.packages_distributions()


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside ``try: ... except ImportError``: used where present, not needed."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            return True
    return False


def imported(paths, *, skip_optional: bool, root: Path = ROOT) -> dict[str, str]:
    """Top-level third-party modules imported by ``paths`` -> one file (under ``root``) importing each."""
    found: dict[str, str] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if skip_optional and _optional(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "bitconvert" and top in PROVIDERS:
                    found.setdefault(top, str(path.relative_to(root)))
    return found


def requirements(group: str | None) -> set[str]:
    """The distributions a group declares (None: the dependencies), extras of bitconvert itself expanded."""
    listed = PYPROJECT["project"]["dependencies"] if group is None else \
        PYPROJECT["project"]["optional-dependencies"][group]  # fmt: skip
    names = set()
    for text in listed:
        req = Requirement(text)
        if norm(req.name) == "bitconvert":
            names |= {n for extra in req.extras for n in requirements(extra)}
        else:
            names.add(norm(req.name))
    return names


def closure(names: set[str]) -> set[str]:
    """``names`` and everything their installed distributions require (markers and extras aside)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [norm(Requirement(r).name) for r in reqs if "extra ==" not in r]
    return seen


def providers(module: str) -> set[str]:
    return {norm(d) for d in PROVIDERS.get(module, [])}


def test_every_module_the_package_imports_is_declared():
    declared = requirements(None) | requirements("runtime") | requirements("kernels")
    used = imported((ROOT / "bitconvert").rglob("*.py"), skip_optional=True)
    undeclared = {m: f for m, f in used.items() if not providers(m) & declared}
    assert undeclared == {}


def test_every_runtime_dependency_is_imported_by_the_package():
    used = imported((ROOT / "bitconvert").rglob("*.py"), skip_optional=False)
    provided = {d for m in used for d in providers(m)}
    assert sorted(requirements(None) - provided) == []  # e.g. safetensors: the tests' only, in the test extra


def test_the_test_extra_installs_what_the_tests_import():
    """As CI installs it (.ci/run): ``pip install -e .[test,kernels]``."""
    installed = closure(requirements(None) | requirements("test") | requirements("kernels"))
    paths = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "fixtures").rglob("*.py")]
    missing = {m: f for m, f in imported(paths, skip_optional=True).items() if not providers(m) & installed}
    assert missing == {}


def test_the_checks_see_an_undeclared_import(tmp_path):
    """A module importing a distribution the runtime does not declare is reported (the checks can
    fail); an import guarded by ``except ImportError`` is optional."""
    module = tmp_path / "m.py"
    module.write_text("import jsonschema\ntry:\n    import psutil\nexcept ImportError:\n    pass\n")
    assert set(imported([module], skip_optional=True, root=tmp_path)) == {"jsonschema"}
    assert set(imported([module], skip_optional=False, root=tmp_path)) == {"jsonschema", "psutil"}
    assert not providers("jsonschema") & requirements(None)  # a test dependency only
    assert providers("jsonschema") & requirements("test")
