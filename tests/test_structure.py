"""The shape of the package: small modules, typed writer options, each header parsed once, docs inside the repo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bitconvert.formats import open_checkpoint, options_for
from bitconvert.errors import UsageError
from bitconvert.io.safetensors import SafetensorsFile
from conftest import FIXTURES, ROOT, run_cli

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


@pytest.mark.parametrize("fixture", ["llama-packed", "bitnet-2b4t-master"])
def test_opening_an_hf_directory_parses_each_header_once(fixture, monkeypatch):
    parsed: list[Path] = []
    real = SafetensorsFile.__init__

    def counting(self, path, *a, **k):
        parsed.append(Path(path))
        real(self, path, *a, **k)

    monkeypatch.setattr(SafetensorsFile, "__init__", counting)
    ckpt = open_checkpoint(FIXTURES / fixture)
    files = sorted(p.name for p in (FIXTURES / fixture).glob("*.safetensors"))
    assert sorted(p.name for p in parsed) == files
    assert ckpt.format == ("hf-packed" if fixture.endswith("packed") else "hf-bf16")


@pytest.mark.parametrize(
    "to, args, flag",
    [
        ("hf-packed", ["--gguf-type", "tq2_0"], "--gguf-type"),
        ("hf-packed", ["--tp", "7"], "--tp"),
        ("hf-packed", ["--embed-type", "q8_0"], "--embed-type"),
        ("gguf", ["--scale-dtype", "f32"], "--scale-dtype"),
        ("gguf", ["--max-shard-size", "1KB"], "--max-shard-size"),
        ("gguf", ["--dtype", "f32"], "--dtype"),
        ("nanotron", ["--linear-class", "bitlinear"], "--linear-class"),
    ],
)
def test_an_option_the_target_does_not_take_is_refused(tmp_path, to, args, flag):
    dst = tmp_path / "out"
    r = run_cli("convert", FIXTURES / "bitnet-2b4t-master", dst, "--to", to, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and f"--to {to}" in lines[0], r.stderr
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_refusal_names_the_formats_that_take_the_option():
    with pytest.raises(UsageError, match=r"--max-shard-size does not apply to --to gguf; it is taken by: hf-bf16, hf-packed"):
        options_for("gguf", {"max_shard_size": "1KB"})


def test_options_parse_and_keep_defaults():
    opts = options_for("hf-packed", {"scale_dtype": "f32", "max_shard_size": "2MB"})
    assert (opts.scale_dtype, opts.max_shard_size, opts.linear_class, opts.dtype) == ("F32", 2_000_000, None, None)
    assert options_for("hf-packed", {}).scale_dtype == "BF16"  # a default is read as a given value is
    assert options_for("gguf", {}).gguf_type == "tq2_0"
    with pytest.raises(UsageError, match="--gguf-type must be one of"):
        options_for("gguf", {"gguf_type": "nonsense"})


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
    from test_import_cycles import import_graph

    climbs = [f"{m} -> {d}" for m, deps in sorted(import_graph().items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert climbs == []


def test_the_layer_check_sees_a_climb(tmp_path):
    """The check above can fail: a lazy import from the ternary layer up to the formats is one climb."""
    from test_import_cycles import import_graph

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
