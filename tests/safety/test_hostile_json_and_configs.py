"""Hostile JSON and configs (config.json, index, safetensors headers, Nanotron metadata, side files,
manifests): too deep, too long a number, values out of range or of the wrong type. Each refusal is
one stderr line naming the file, exit 1, no traceback, no DST, no staging left, the input unchanged;
a count the config inflates is refused fast and in little memory; the depth bound counts structure,
never text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, cli
from refusals import copy_fixture, refused, snapshot


DEEP = "[" * 1000 + "1" + "]" * 1000


BIG_INT = "1" * 4400


def edit_config(src: Path, text: str) -> None:
    (src / "config.json").write_text(text, encoding="utf-8")


def config_with(src: Path, key: str, literal: str) -> None:
    """config.json with ``key`` set to a raw JSON literal (which json.dumps could not write)."""
    d = json.loads((src / "config.json").read_text())
    d[key] = "@@HOLE@@"
    edit_config(src, json.dumps(d).replace('"@@HOLE@@"', literal))


@pytest.mark.parametrize("literal, needle", [(DEEP, "nested too deeply"), (BIG_INT, "4400 digits")])
def test_a_config_too_deep_or_with_a_huge_literal_is_refused(tmp_path, literal, needle):
    src = copy_fixture(tmp_path)
    config_with(src, "extra", literal)
    refused(src, tmp_path, "config.json", needle)


@pytest.mark.parametrize("literal, needle", [(DEEP, "nested too deeply"), (BIG_INT, "4400 digits")])
def test_an_index_too_deep_or_with_a_huge_literal_is_refused(tmp_path, literal, needle):
    src = copy_fixture(tmp_path)
    (src / "model.safetensors.index.json").write_text('{"weight_map": {}, "metadata": ' + literal + "}")
    refused(src, tmp_path, "model.safetensors.index.json", needle)


def rewrite_header(path: Path, edit) -> None:
    """Re-encode a safetensors header after ``edit(header_text) -> text``, keeping the data as is."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    text = edit(raw[8 : 8 + n].decode().rstrip())
    text += " " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text.encode() + raw[8 + n :])


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda h: h[:-1] + ',"zz":' + DEEP + "}", "nested too deeply"),
        (lambda h: h[:-1] + ',"zz":' + BIG_INT + "}", "4400 digits"),
        (lambda h: h.replace('"dtype":"BF16"', '"dtype":["BF16"]', 1), "unsupported dtype ['BF16']"),
    ],
    ids=["deep", "big-int", "dtype-list"],
)
def test_a_hostile_safetensors_header_is_refused(tmp_path, edit, needle):
    src = copy_fixture(tmp_path)
    rewrite_header(src / "model.safetensors", edit)
    refused(src, tmp_path, "model.safetensors", needle)


def test_nanotron_metadata_too_deep_is_refused(tmp_path):
    nt = tmp_path / "nt"
    assert cli("convert", FIXTURES / "llama-master", nt, "--to", "nanotron", "--allow-lossy").returncode == 0
    (nt / "checkpoint_metadata.json").write_text('{"tp": 1, "custom_metas": ' + DEEP + "}")
    refused(nt, tmp_path, "checkpoint_metadata.json", "nested too deeply")


def test_the_hf_config_nanotron_records_is_checked(tmp_path):
    nt = tmp_path / "nt"
    assert cli("convert", FIXTURES / "llama-master", nt, "--to", "nanotron", "--allow-lossy").returncode == 0
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    meta["custom_metas"]["bitconvert"]["hf_config"]["num_attention_heads"] = 0
    (nt / "checkpoint_metadata.json").write_text(json.dumps(meta))
    refused(nt, tmp_path, "checkpoint_metadata.json", "num_attention_heads")


def test_verify_reports_an_unreadable_side_file_as_a_failed_check(tmp_path):
    """verify parses every side JSON file: a hostile one is a failed check, not a traceback."""
    src = copy_fixture(tmp_path)
    (src / "generation_config.json").write_text(DEEP)
    before = snapshot(src)
    proc = cli("verify", src)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "generation_config.json: not valid JSON" in proc.stdout and "nested too deeply" in proc.stdout
    assert snapshot(src) == before


def test_a_manifest_too_deep_is_one_line(tmp_path):
    src = copy_fixture(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(DEEP)
    proc = cli("verify", src, "--manifest-check", manifest)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "manifest.json" in lines[0] and "nested too deeply" in lines[0]


@pytest.mark.parametrize(
    "key, literal, needle",
    [
        ("hidden_size", "1e400", "overflows"),
        ("hidden_size", "Infinity", "Infinity"),
        ("intermediate_size", str(2**64), "intermediate_size must be between 1 and"),
        ("num_hidden_layers", "2.5", "num_hidden_layers must be a whole number"),
        ("num_attention_heads", "0", "num_attention_heads must be between 1 and"),
        ("num_key_value_heads", "3", "does not divide"),
        ("rope_parameters", "[1]", "rope_parameters must be an object"),
        ("rms_norm_eps", "-1", "rms_norm_eps must be a finite positive number"),
        ("vocab_size", '"32000"', "vocab_size must be a whole number"),
        ("eos_token_id", '[{"a": 1}]', "eos_token_id must be a token id"),
    ],
)
def test_config_numbers_out_of_range_are_refused_naming_the_key(tmp_path, key, literal, needle):
    src = copy_fixture(tmp_path)
    config_with(src, key, literal)
    refused(src, tmp_path, "config.json", needle)


def test_hidden_size_not_divisible_by_heads(tmp_path):
    src = copy_fixture(tmp_path)
    d = json.loads((src / "config.json").read_text())
    d.pop("head_dim", None)
    d["hidden_size"] = d["num_attention_heads"] * 16 + 1
    edit_config(src, json.dumps(d))
    refused(src, tmp_path, "config.json", "not a multiple of num_attention_heads")


HUGE_LAYERS = """
import json, resource, sys, time
from pathlib import Path
from bitconvert.errors import CheckpointError
from bitconvert.formats import open_checkpoint
src = Path(sys.argv[1])
open_checkpoint(Path(sys.argv[2]))  # imports and first-use setup happen before the measurement
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    open_checkpoint(src)
    problem = None
except CheckpointError as exc:
    problem = str(exc)
print(json.dumps({"s": time.perf_counter() - t, "mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024,
                  "problem": problem}))
"""


@pytest.mark.parametrize("layers", [10**9, 5000])
def test_a_huge_layer_count_is_refused_fast_and_small(tmp_path, layers):
    """10^9 layers: refused by the bound on counts; 5,000: by the tensors the headers declare."""
    src = copy_fixture(tmp_path)
    config_with(src, "num_hidden_layers", str(layers))
    refused(src, tmp_path, "num_hidden_layers" if layers > 10**4 else "the config implies")
    proc = subprocess.run([sys.executable, "-c", HUGE_LAYERS, str(src), str(FIXTURES / "llama-master")], capture_output=True, text=True, cwd=ROOT)
    got = json.loads(proc.stdout)
    assert got["problem"] and got["s"] < 1.0 and got["mb"] < 100, got


def _reference_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


def test_json_depth_counts_structure_not_strings():
    """Brackets, quotes and backslashes inside strings never count; the measured depth is exact."""
    import random

    from bitconvert.errors import CheckpointError
    from bitconvert.io.jsonfile import MAX_DEPTH, _depth, parse_json_text

    rng = random.Random(12)
    leaves = [1, None, 2.5, "a[b", "]]}", '\\"[', "\\\\", 'x\\\\"[[', '"', "\\", "{"]

    def value(depth: int):
        if depth > 10 or rng.random() < 0.3:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["k", "[", '\\"{', "}", '"']) + str(i): value(depth + 1) for i in range(rng.randrange(4))}

    for _ in range(2000):
        v = value(0)
        text = json.dumps(v, ensure_ascii=rng.random() < 0.5).encode()
        assert _depth(text) == _reference_depth(v), text
    ok = '["' + "[" * 500 + '", ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "]"
    assert _reference_depth(parse_json_text(ok, "x")) == MAX_DEPTH
    with pytest.raises(CheckpointError, match="nested too deeply"):
        parse_json_text("[" + ok + "]", "x")
