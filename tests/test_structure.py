"""The shape of the package: small modules, docs that point inside the repository, and layers that
only import downwards (torch on the runtime's side of them); ``test_import_cycles.py`` beside this
file shows there is no import cycle."""

from __future__ import annotations

import subprocess

from conftest import ROOT
from test_import_cycles import import_graph

MAX_MODULE_LINES = 400


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "bitconvert").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_docs_point_inside_the_repository():
    tracked = subprocess.run(
        ["git", "grep", "-l", "FORMATS.md"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert [f for f in tracked if f != "CHANGELOG.md" and not f.startswith("tests/test_structure")] == []


#: the package's layers, low to high: a module imports only from its own layer or lower ones
LAYERS = (
    ("bitconvert", "bitconvert.errors", "bitconvert.secrets", "bitconvert.dtypes"),
    ("bitconvert.io",),
    ("bitconvert.ternary",),
    ("bitconvert.model",),
    ("bitconvert.formats", "bitconvert.hub"),
    ("bitconvert.convert", "bitconvert.describe", "bitconvert.kernels"),
    ("bitconvert.runtime",),
    ("bitconvert.verify",),
    ("bitconvert.publish",),
    ("bitconvert.cli", "bitconvert.__main__"),
)


def layer_of(module: str) -> int:
    """The layer of ``module``: its longest listed prefix's; every module must have one."""
    found = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
             if module == name or module.startswith(name + ".")]  # fmt: skip
    assert found, f"{module} is in no layer: add it to LAYERS"
    return max(found)[1]


def test_no_import_climbs_to_a_higher_layer():
    climbs = [f"{m} -> {d}" for m, deps in sorted(import_graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert climbs == []


def test_the_layer_check_sees_a_climb(tmp_path):
    """The check above can fail: a lazy import from the ternary layer up to the formats is one climb."""
    pkg = tmp_path / "bitconvert"
    (pkg / "ternary").mkdir(parents=True)
    (pkg / "formats").mkdir()
    for f in ("__init__.py", "ternary/__init__.py", "formats/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "ternary" / "math.py").write_text("def f():\n    from ..formats import thing\n")
    graph = import_graph(pkg)
    assert [(m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)] == [
        ("bitconvert.ternary.math", "bitconvert.formats")
    ]


def test_nothing_below_the_runtime_imports_it():
    """torch stays on the runtime's side: ternary, model, formats and io never import runtime or kernels."""
    lower = tuple(f"bitconvert.{p}" for p in ("errors", "secrets", "dtypes", "io", "ternary", "model", "formats"))
    torch_side = ("bitconvert.runtime", "bitconvert.kernels")
    leaks = {m: sorted(d for d in deps if d.startswith(torch_side))
             for m, deps in import_graph().items() if m.startswith(lower)}
    assert {m: d for m, d in leaks.items() if d} == {}
