"""Hostile inputs through the real CLI: each ends in one stderr line, exit 1, no traceback, no DST,
no staging left, and the input unchanged (issue 12).

Every case starts from a shipped fixture, breaks one thing the way an outside tester did, and runs
``pack`` (or ``verify``) in a subprocess as a user would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT, run_cli

DEEP = "[" * 1000 + "1" + "]" * 1000
BIG_INT = "1" * 4400


def snapshot(path: Path) -> dict[str, object]:
    """Every file's bytes (a link's target for links) under ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(path))] = os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def refused(src: Path, tmp_path: Path, *needles: str, command: str = "pack", extra: tuple[str, ...] = ()) -> str:
    """Run ``command SRC DST``; assert the whole promise of issue 12; return the one error line."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    dst = out / "dst"
    before = snapshot(src)
    proc = run_cli(command, src, dst, *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not dst.exists() and list(out.iterdir()) == [], list(out.iterdir())  # no DST, no staging
    assert snapshot(src) == before
    return lines[0]


def copy_fixture(tmp_path: Path, name: str = "llama-master") -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / name, src)
    return src


def edit_config(src: Path, text: str) -> None:
    (src / "config.json").write_text(text, encoding="utf-8")


def config_with(src: Path, key: str, literal: str) -> None:
    """config.json with ``key`` set to a raw JSON literal (which json.dumps could not write)."""
    d = json.loads((src / "config.json").read_text())
    d[key] = "@@HOLE@@"
    edit_config(src, json.dumps(d).replace('"@@HOLE@@"', literal))


# --- JSON anywhere: depth and literal size -----------------------------------------------------------


@pytest.mark.parametrize("literal, needle", [(DEEP, "nested too deeply"), (BIG_INT, "4400 digits")])
def test_config_json_deep_or_huge_literal(tmp_path, literal, needle):
    src = copy_fixture(tmp_path)
    config_with(src, "extra", literal)
    refused(src, tmp_path, "config.json", needle)


@pytest.mark.parametrize("literal, needle", [(DEEP, "nested too deeply"), (BIG_INT, "4400 digits")])
def test_index_deep_or_huge_literal(tmp_path, literal, needle):
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
def test_safetensors_header(tmp_path, edit, needle):
    src = copy_fixture(tmp_path)
    rewrite_header(src / "model.safetensors", edit)
    refused(src, tmp_path, "model.safetensors", needle)


def test_nanotron_json_deep(tmp_path):
    nt = tmp_path / "nt"
    assert run_cli("convert", FIXTURES / "llama-master", nt, "--to", "nanotron", "--allow-lossy").returncode == 0
    (nt / "checkpoint_metadata.json").write_text('{"tp": 1, "custom_metas": ' + DEEP + "}")
    refused(nt, tmp_path, "checkpoint_metadata.json", "nested too deeply")


def test_nanotron_recorded_hf_config_checked(tmp_path):
    nt = tmp_path / "nt"
    assert run_cli("convert", FIXTURES / "llama-master", nt, "--to", "nanotron", "--allow-lossy").returncode == 0
    meta = json.loads((nt / "checkpoint_metadata.json").read_text())
    meta["custom_metas"]["bitconvert"]["hf_config"]["num_attention_heads"] = 0
    (nt / "checkpoint_metadata.json").write_text(json.dumps(meta))
    refused(nt, tmp_path, "checkpoint_metadata.json", "num_attention_heads")


def test_verify_reports_unreadable_side_json(tmp_path):
    """verify parses every side JSON file: a hostile one is a failed check, not a traceback."""
    src = copy_fixture(tmp_path)
    (src / "generation_config.json").write_text(DEEP)
    before = snapshot(src)
    proc = run_cli("verify", src)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "generation_config.json: not valid JSON" in proc.stdout and "nested too deeply" in proc.stdout
    assert snapshot(src) == before


def test_manifest_deep(tmp_path):
    src = copy_fixture(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(DEEP)
    proc = run_cli("verify", src, "--manifest-check", manifest)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "manifest.json" in lines[0] and "nested too deeply" in lines[0]


# --- config numbers ---------------------------------------------------------------------------------


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
def test_config_numbers(tmp_path, key, literal, needle):
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
def test_huge_layer_count_refused_fast_and_small(tmp_path, layers):
    """10^9 layers: refused by the bound on counts; 5,000: by the tensors the headers declare."""
    src = copy_fixture(tmp_path)
    config_with(src, "num_hidden_layers", str(layers))
    refused(src, tmp_path, "num_hidden_layers" if layers > 10**4 else "the config implies")
    proc = subprocess.run([sys.executable, "-c", HUGE_LAYERS, str(src), str(FIXTURES / "llama-master")], capture_output=True, text=True, cwd=ROOT)
    got = json.loads(proc.stdout)
    assert got["problem"] and got["s"] < 1.0 and got["mb"] < 100, got


# --- files from outside SRC ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["pack", "convert"])
def test_side_file_link_out_of_src(tmp_path, command):
    src = copy_fixture(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for upload\n")
    (src / "notes.txt").symlink_to(secret)
    extra = ("--to", "hf-bf16") if command == "convert" else ()
    line = refused(src, tmp_path, "notes.txt", str(secret.resolve()), "outside", command=command, extra=extra)
    assert "not for upload" not in line


def test_shard_link_out_of_src(tmp_path):
    src = copy_fixture(tmp_path)
    elsewhere = tmp_path / "elsewhere.safetensors"
    (src / "model.safetensors").rename(elsewhere)
    (src / "model.safetensors").symlink_to(elsewhere)
    refused(src, tmp_path, "model.safetensors", str(elsewhere.resolve()))


def test_hf_cache_links_are_followed(tmp_path):
    """The Hugging Face cache's own layout: snapshot files are links into the repo's blobs/."""
    repo = tmp_path / "hub" / "models--org--name"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted((FIXTURES / "llama-master").iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    dst = tmp_path / "packed"
    proc = run_cli("pack", snap, dst)
    assert proc.returncode == 0, proc.stderr
    assert (dst / "tokenizer.json").read_bytes() == (FIXTURES / "llama-master" / "tokenizer.json").read_bytes()


def test_index_names_overlong_file(tmp_path):
    src = copy_fixture(tmp_path)
    index = {"weight_map": {"model.embed_tokens.weight": "x" * 300 + ".safetensors"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(src, tmp_path, "model.safetensors.index.json", "longer than 255 bytes")


# --- non-finite master weights ------------------------------------------------------------------------


def poke_bf16(path: Path, tensor: str, flat_index: int, value: float) -> None:
    """Overwrite one bf16 element of ``tensor`` in place (the top half of its float32 bits)."""
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8 : 8 + n])[tensor]
    assert entry["dtype"] == "BF16"
    at = 8 + n + entry["data_offsets"][0] + 2 * flat_index
    raw[at : at + 2] = struct.pack("<f", value)[2:]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_master_weight(tmp_path, value):
    src = copy_fixture(tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"
    cols = json.loads((src / "config.json").read_text())["intermediate_size"]
    poke_bf16(src / "model.safetensors", name, 2 * cols + 5, value)
    line = refused(src, tmp_path, name, "non-finite value", "index [2, 5]")
    assert str(value) in line


# --- the depth bound itself ----------------------------------------------------------------------------


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
