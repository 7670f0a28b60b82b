"""The README's GGUF commands run as written on the bundled fixtures (whose 256-wide rows fill TQ
blocks), and the round trip they show comes back byte for byte."""

from __future__ import annotations

import json
import shlex

from conftest import ROOT, cli, read_all


def readme_gguf_examples() -> list[list[str]]:
    """The ``$ bitconvert ...`` lines of README.md that involve GGUF, as argument lists."""
    lines = [ln.strip().removeprefix("$ ") for ln in (ROOT / "README.md").read_text().splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("bitconvert ") and "gguf" in ln]


def test_the_readmes_gguf_examples_run_on_the_bundled_fixtures(tmp_path):
    examples = readme_gguf_examples()
    assert len(examples) >= 5 and any("fixtures/bitnet-2b4t-256-packed" in a for a in examples)
    for args in examples:
        args = [a.replace("/tmp/", f"{tmp_path}/") for a in args]  # outputs go to this test's folder
        r = cli(*args, cwd=ROOT)
        assert r.returncode == 0, (args, r.stderr[-1500:])
    back = tmp_path / "bitnet-256-back"
    a, b = read_all(ROOT / "fixtures" / "bitnet-2b4t-256-packed"), read_all(back)
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and (a[k] == b[k]).all() for k in a)


def test_the_wide_fixtures_rows_fill_tq_blocks():
    cfg = json.loads((ROOT / "fixtures" / "bitnet-2b4t-256-master" / "config.json").read_text())
    assert cfg["hidden_size"] % 256 == 0 and cfg["intermediate_size"] % 256 == 0
