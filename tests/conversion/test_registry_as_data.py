"""What the format registry knows as data, so that commands check and refuse before importing a reader or a
writer: whether each writer's output is a folder or a file, and which readers could claim a path. The
tables are checked against what the writers write and what the readers' own ``detect`` accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from bitconvert.convert import convert
from bitconvert.errors import UsageError
from bitconvert.formats import CATALOGUE, MAY_READ, OUTPUT_IS_DIRECTORY, READERS, load_readers, writes_directory

SOURCES = {"hf-bf16": "bitnet-2b4t-256-master", "hf-packed": "bitnet-2b4t-256-packed"}
OPTIONS = {"nanotron": {"allow_lossy": True}}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("outputs")
    made = {}
    for fmt in CATALOGUE:
        made[fmt] = root / f"out-{fmt}"
        convert(FIXTURES / "bitnet-2b4t-256-master", made[fmt], fmt, OPTIONS.get(fmt))
    return made


@pytest.mark.parametrize("fmt", sorted(CATALOGUE))
def test_the_output_kind_is_what_the_writer_writes(fmt, outputs):
    assert outputs[fmt].is_dir() is writes_directory(fmt) is OUTPUT_IS_DIRECTORY[fmt]
    assert outputs[fmt].is_file() is not OUTPUT_IS_DIRECTORY[fmt]


def test_an_unknown_output_format_is_refused_without_a_writer():
    with pytest.raises(UsageError, match="unknown output format 'safetensors'; choose one of: bitnet-gpu, gguf, hf-bf16"):
        writes_directory("safetensors")


def _paths(outputs: dict[str, Path]) -> list[Path]:
    extra = [FIXTURES / n for n in ("bitnet-2b4t-master", "bitnet-2b4t-packed", "tokenizer", "llama-packed")]
    return [*outputs.values(), *extra, FIXTURES / "bitnet-2b4t-packed" / "config.json", FIXTURES]


def test_every_reader_claims_only_what_may_read_allows(outputs):
    load_readers()
    claimed = 0
    for path in _paths(outputs):
        for name in CATALOGUE:  # in detection's order: the first reader that claims a path takes it
            if name in READERS and READERS[name].detect(path):
                claimed += 1
                assert MAY_READ[name](path), (name, path)
                break
    assert claimed >= len(outputs)


@pytest.mark.parametrize("fmt", sorted(CATALOGUE))
def test_opening_each_output_loads_only_the_readers_that_may_take_it(fmt, outputs):
    code = (
        "import sys; from bitconvert.formats import CATALOGUE, open_checkpoint\n"
        f"print(open_checkpoint({str(outputs[fmt])!r}).format)\n"
        "print(sorted(n for n, (r, w) in CATALOGUE.items() if f'bitconvert.formats.{r}' in sys.modules))\n"
        "print(sorted(n for n, (r, w) in CATALOGUE.items() if f'bitconvert.formats.{w}' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    detected, readers, writers = proc.stdout.strip().splitlines()
    assert detected == fmt
    hf = "['hf-bf16', 'hf-packed']"  # one module imports the other
    assert readers == {"gguf": "['gguf']", "nanotron": "['nanotron']", "bitnet-gpu": "['bitnet-gpu']"}.get(fmt, hf)
    assert writers == "[]"


def test_a_path_no_reader_may_take_is_refused(tmp_path):
    from bitconvert.errors import CheckpointError
    from bitconvert.formats import open_checkpoint

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint bitconvert can read"):
        open_checkpoint(tmp_path / "empty")
    with pytest.raises(UsageError, match="no such file or directory"):
        open_checkpoint(tmp_path / "absent")
