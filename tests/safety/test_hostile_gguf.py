"""Hostile GGUF files: malformed headers fail fast in little memory (where gguf-py would hang), forged
counts and hostile metadata end in one line naming the key, bad codes and non-canonical TQ1_0
bytes name the tensor, an unreadable embedded config falls back to the GGUF keys, an unreadable
tokenizer.json stops unless --no-tokenizer, and rows that fill no block stop unless
--allow-fallback; no partial output is left."""

from __future__ import annotations

import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import FIXTURES, cli, one_line_error
from gguf_tools import kv, rewrite_gguf

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile


def to_gguf(src: Path, dst: Path, gguf_type: str = "tq2_0") -> Path:
    convert(src, dst, "gguf", {"gguf_type": gguf_type})
    return dst


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<Iqq", version, n_tensors, n_kv)


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _tensor(name: str, ne: list[int], gtype: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne) + struct.pack("<IQ", gtype, offset)


def _kv_u32(key: str, v: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, v)


def _padded(head: bytes, data: bytes = b"") -> bytes:
    return head + b"\0" * (-len(head) % 32) + data


MALFORMED = {
    "huge array": (_header(0, 1) + _s("a") + struct.pack("<IIQ", 9, 4, 2**62), "declares"),
    "huge string": (_header(0, 1) + _s("a") + struct.pack("<IQ", 8, 2**60), "bytes"),
    "huge string array": (_header(0, 1) + _s("a") + struct.pack("<IIQ", 9, 8, 2**40), "strings"),
    "huge key count": (_header(0, 2**40), "keys cannot fit"),
    "huge tensor count": (_header(2**40, 0), "tensors cannot fit"),
    "truncated key": (_header(0, 1) + struct.pack("<Q", 100) + b"abc" * 10, "only"),
    "duplicate key": (_header(0, 2) + _kv_u32("x", 1) + _kv_u32("x", 2), "duplicate key"),
    "nested array": (_header(0, 1) + _s("a") + struct.pack("<IIQ", 9, 9, 1), "item type 9"),
    "unknown value type": (_header(0, 1) + _s("a") + struct.pack("<I", 77), "unknown value type"),
    "five dims": (_padded(_header(1, 0) + _tensor("t", [1, 1, 1, 1, 1], 0, 0), b"\0" * 32), "at most 4"),
    "duplicate tensor": (
        _padded(_header(2, 0) + _tensor("t", [8], 0, 0) + _tensor("t", [8], 0, 32), b"\0" * 64), "duplicate tensor"
    ),
    "overflowing dims": (_padded(_header(1, 0) + _tensor("t", [2**40, 2**40], 0, 0)), "overflow"),
    "negative dim": (_padded(_header(1, 0) + _tensor("t", [-4], 0, 0)), "negative"),
    "unknown type": (_padded(_header(1, 0) + _tensor("t", [8], 99, 0), b"\0" * 32), "not supported"),
    "TL1 type": (_padded(_header(1, 0) + _tensor("t", [8], 38, 0), b"\0" * 32), "TL1"),
    "misaligned offset": (_padded(_header(1, 0) + _tensor("t", [8], 0, 8), b"\0" * 64), "not aligned"),
    "gap": (_padded(_header(2, 0) + _tensor("a", [8], 0, 0) + _tensor("b", [8], 0, 64), b"\0" * 96), "expected 32"),
    "truncated data": (_padded(_header(1, 0) + _tensor("t", [1024], 0, 0), b"\0" * 32), "truncated"),
    "bad block": (_padded(_header(1, 0) + _tensor("t", [100], 35, 0), b"\0" * 32), "multiple"),
    "bad alignment": (_header(0, 1) + _kv_u32("general.alignment", 48), "power-of-two"),
    "long name": (_padded(_header(1, 0) + _tensor("n" * 80, [8], 0, 0), b"\0" * 32), "longer than"),
    "version 1": (_header(0, 0, version=1), "version 1"),
    "big endian": (b"GGUF" + struct.pack(">Iqq", 3, 0, 0), "big-endian"),
    "not gguf": (b"GGML" + b"\0" * 60, "no GGUF magic"),
    "empty": (b"", "no GGUF magic"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_header_fails_fast_in_little_memory(tmp_path, case):
    data, words = MALFORMED[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        GGUFFile(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 4 * 2**20
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message


def test_an_array_bomb_gguf_py_would_hang_on_fails_in_one_line(tmp_path):
    # a 52-byte file declaring an array of 2**62 u32 items, rejected from its length alone
    data = _header(0, 1) + _s("a") + struct.pack("<IIQ", 9, 4, 2**62)
    assert len(data) <= 52
    path = tmp_path / "bomb.gguf"
    path.write_bytes(data)
    r = cli("inspect", path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bomb.gguf" in r.stderr


def test_a_truncated_file_and_a_bad_code_are_refused(wide_checkpoint, tmp_path):
    to_gguf(wide_checkpoint["1bitllm-packed"], tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(tmp_path / "cut.gguf")
    f = GGUFFile(tmp_path / "m.gguf")
    t = f.tensors["blk.0.attn_v.weight"]
    bad = bytearray(data)
    bad[t.offset + 66 * 3] = 0xFF  # code 3 in a TQ2_0 block
    (tmp_path / "bad.gguf").write_bytes(bytes(bad))
    ck = open_checkpoint(tmp_path / "bad.gguf")
    with pytest.raises(CheckpointError, match="code 3"):
        ck.tensors["model.layers.0.self_attn.v_proj.weight"].load()


@pytest.fixture(scope="module")
def good_gguf(wide_checkpoint, converted) -> Path:
    """A sound GGUF (TQ2_0 of the wide 2B-4T checkpoint) to break one key at a time."""
    return converted(wide_checkpoint["bitnet-2b4t-packed"], "gguf")


HOSTILE = {
    "zero heads": ({"bitnet.attention.head_count": ("u32", 0)}, ["bitnet.attention.head_count", "is 0"]),
    "text epsilon": ({"bitnet.attention.layer_norm_rms_epsilon": ("str", "tiny")}, ["epsilon", "not a number"]),
    "nan epsilon": ({"bitnet.attention.layer_norm_rms_epsilon": ("f32", float("nan"))}, ["finite and positive"]),
    "zero rope base": ({"bitnet.rope.freq_base": ("f32", 0.0)}, ["bitnet.rope.freq_base", "finite and positive"]),
    "text layers": ({"bitnet.block_count": ("str", "2")}, ["bitnet.block_count", "not an integer"]),
    "kv over heads": ({"bitnet.attention.head_count_kv": ("u32", 8)}, ["head_count_kv", "is 8"]),
    "no architecture": ({"general.architecture": None}, ["general.architecture", "missing"]),
    "activation number": ({"bitnet.hidden_activation": ("u32", 2)}, ["hidden_activation", "not a string"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_is_one_line(good_gguf, tmp_path, case):
    changes, words = HOSTILE[case]
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {k: v and kv(*v) for k, v in changes.items()})
    one_line_error(cli("inspect", bad, "--no-stats"), 1, str(bad), *words)


def test_a_forged_block_count_is_refused_fast_in_little_memory(good_gguf, tmp_path):
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"bitnet.block_count": kv("u32", 10**9)})
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="block_count is 1000000000") as info:
        open_checkpoint(bad)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100 * 2**20, (elapsed, peak)
    assert "tensors" in str(info.value)
    one_line_error(cli("convert", bad, tmp_path / "out", "--to", "hf-packed"), 1, "block_count")
    assert not (tmp_path / "out").exists()


def test_a_token_that_is_not_utf8_is_one_line(good_gguf, tmp_path):
    tokens = list(GGUFFile(good_gguf).get("tokenizer.ggml.tokens"))
    tokens[7] = b"ab\xffcd".decode("utf-8", "surrogateescape")  # stored as those raw bytes
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"tokenizer.ggml.tokens": kv("strs", tokens)})
    assert b"ab\xffcd" in bad.read_bytes()
    r = cli("convert", bad, tmp_path / "out", "--to", "hf-packed")
    one_line_error(r, 1, "tokenizer.ggml.tokens item 7", "UTF-8")
    assert not (tmp_path / "out").exists()


def test_an_unreadable_embedded_config_falls_back_to_the_gguf_keys(good_gguf, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for text in (deep, '{"hidden_size": 1e400}', "[1]", '{"num_attention_heads": 0}'):
        bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"bitconvert.hf_config": kv("str", text)})
        ck = open_checkpoint(bad)
        assert ck.config.num_hidden_layers == 2
        assert any("ignored unreadable bitconvert.hf_config" in n for n in ck.notes), text[:20]
        bad.unlink()


def test_an_unreadable_tokenizer_json_stops_unless_no_tokenizer(wide_checkpoint, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(wide_checkpoint["1bitllm-packed"], src)
    (src / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    out = tmp_path / "m.gguf"
    r = cli("convert", src, out, "--to", "gguf")
    one_line_error(r, 1, "tokenizer.json", "--no-tokenizer")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    r = cli("convert", src, out, "--to", "gguf", "--no-tokenizer")
    assert r.returncode == 0, r.stderr
    f = GGUFFile(out)
    # no vocabulary, said so: llama.cpp and bitnet.cpp load no GGUF without tokenizer.ggml.model
    assert {k: v.value for k, v in f.metadata.items() if k.startswith("tokenizer.")} == {"tokenizer.ggml.model": "no_vocab"}
    r = cli("convert", src, tmp_path / "x", "--to", "hf-packed", "--no-tokenizer")
    assert r.returncode == 2 and "--no-tokenizer" in r.stderr


def test_non_canonical_tq1_0_bytes_are_one_line(wide_checkpoint, tmp_path):
    to_gguf(wide_checkpoint["1bitllm-packed"], tmp_path / "m.gguf", "tq1_0")
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    t = GGUFFile(tmp_path / "m.gguf").tensors["blk.1.ffn_up.weight"]
    data[t.offset + 54 * 5 + 3] = 1  # byte 1 in qs: no five trits encode to it
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    r = cli("convert", tmp_path / "bad.gguf", tmp_path / "out", "--to", "hf-packed")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "blk.1.ffn_up.weight" in lines[0] and "TQ1_0" in lines[0] and "canonical" in lines[0]
    assert not (tmp_path / "out").exists()


def test_rows_that_fill_no_block_stop_naming_the_tensor(tmp_path):
    dst = tmp_path / "m.gguf"
    r = cli("convert", FIXTURES / "1bitllm-packed", dst, "--to", "gguf")
    assert r.returncode == 1, r.stderr
    assert "model.layers.0.self_attn.q_proj.weight" in r.stderr and "256" in r.stderr and "--allow-fallback" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_a_failure_mid_stream_leaves_nothing(wide_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(wide_checkpoint["1bitllm-packed"], src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][5, 7] = 0xFF  # code 3: found only when loaded
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="code 3"):
        to_gguf(src, out / "m.gguf")
    assert list(out.iterdir()) == []
