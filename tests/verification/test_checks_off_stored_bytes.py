"""Integrity checks read off stored bytes (packed weights, GGUF blocks, recorded float weights, Nanotron
shards) say exactly what the checks of the loaded tensors say, check for check, on sound and on
damaged files.

``verify`` without a manifest and ``upload --dry-run`` count codes from bytes (``entry.stored()``);
with hashing on, every tensor but packed ones is loaded and decoded by its reader, whose decoding is
cross-checked elsewhere against gguf-py, llama.cpp and Nanotron.
"""

from __future__ import annotations

import math
import shutil
import struct

import numpy as np
import pytest
from conftest import FIXTURES

from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.io.safetensors import SafetensorsFile
from bitconvert.model.checkpoint import Stored
from bitconvert.verify import integrity, verify_integrity

PACKED = ["bitnet-2b4t-packed", "1bitllm-packed", "llama-packed"]


PACKED_256 = FIXTURES / "bitnet-2b4t-256-packed"


CASES = {
    "tq2_0": (PACKED_256, "gguf", {}),
    "tq1_0": (PACKED_256, "gguf", {"gguf_type": "tq1_0"}),
    "i2_s-x86": (PACKED_256, "gguf", {"gguf_type": "i2_s"}),
    "i2_s-x86-rows": (PACKED_256, "gguf", {"gguf_type": "i2_s", "i2s_layout": "x86-rows"}),
    "i2_s-arm": (PACKED_256, "gguf", {"gguf_type": "i2_s", "i2s_layout": "arm"}),
    "tq2_0-llama.cpp-recipe": (FIXTURES / "bitnet-2b4t-256-master", "gguf", {"recipe": "llama.cpp"}),
    "hf-bf16-recorded": (FIXTURES / "bitnet-2b4t-packed", "hf-bf16", {}),
    "nanotron-latent": (FIXTURES / "bitnet-2b4t-master", "nanotron", {"tp": 2, "flavor": "pr178", "allow_lossy": True}),
    "nanotron-recorded": (FIXTURES / "llama-packed", "nanotron",
                          {"tp": 2, "flavor": "pr178", "allow_approximate": True, "allow_lossy": True}),
    "nanotron-no-norms": (FIXTURES / "bitnet-2b4t-master", "nanotron", {"tp": 1, "allow_lossy": True}),
}  # fmt: skip


LATENT = {"nanotron-latent", "nanotron-no-norms"}  # float masters: no codes to count


@pytest.fixture(scope="module")
def made(converted):
    """Every case converted once per session (shared: tests that damage one copy it first)."""
    return {key: converted(src, fmt, **options) for key, (src, fmt, options) in CASES.items()}


def checks(report) -> list[tuple]:
    return [(c.name, c.passed, c.detail, c.tensor, c.figure) for c in report.checks]


def both_ways(path, monkeypatch) -> tuple[list[tuple], list[tuple], list[str]]:
    """Checks off the bytes, checks of the loaded tensors, and which tensors the first had to load."""
    loaded: list[str] = []
    real = integrity._value_checks

    def counting(name, *args, **kwargs):
        loaded.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(integrity, "_value_checks", counting)
    off_bytes = checks(verify_integrity(path, digests=False))
    seen = list(loaded)
    monkeypatch.setattr(integrity, "_value_checks", real)
    return off_bytes, checks(verify_integrity(path, digests=True)), seen


@pytest.mark.parametrize("case", CASES)
def test_checks_off_the_bytes_equal_the_checks_of_the_loaded_tensors(case, made, monkeypatch):
    off_bytes, loaded, fell_back = both_ways(made[case], monkeypatch)
    assert off_bytes == loaded
    assert all(c[1] for c in off_bytes), [c for c in off_bytes if not c[1]]
    assert fell_back == []  # every tensor, ternary or not, was checked on its bytes
    quantized = verify_integrity(made[case], digests=False).figures["ternary_tensors"]
    assert quantized > 0 and sum(c[0] == "codes" for c in off_bytes) == (0 if case in LATENT else quantized)


def test_llama_cpp_files_are_checked_off_their_bytes_too(wide_checkpoint, llama_cpp_gguf, monkeypatch):
    theirs = llama_cpp_gguf(wide_checkpoint["1bitllm-master"], "tq2_0")
    off_bytes, loaded, fell_back = both_ways(theirs, monkeypatch)
    assert off_bytes == loaded and fell_back == []
    assert sum(c[0] == "codes" and c[1] for c in off_bytes) == 14


def _gguf_tensor(path, name):
    f = GGUFFile(path)
    return f.tensors[name]


def _patched(src, dst, edits: dict[int, bytes]):
    data = bytearray(src.read_bytes())
    for at, new in edits.items():
        data[at : at + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


def _used_tq2_0_blocks(path, gname):
    """Indices of the blocks of a TQ2_0 tensor holding a non-zero code (a byte other than four stored 1s)."""
    t = _gguf_tensor(path, gname)
    blocks = np.frombuffer(path.read_bytes()[t.offset : t.offset + t.nbytes], dtype=np.uint8).reshape(-1, 66)
    return t, np.flatnonzero((blocks[:, :64] != 0x55).any(axis=1))


def test_a_code_3_in_tq2_0_fails_the_same_both_ways(made, tmp_path, monkeypatch):
    t = _gguf_tensor(made["tq2_0"], "blk.0.ffn_down.weight")
    bad = _patched(made["tq2_0"], tmp_path / "bad.gguf", {t.offset + 5: b"\xff"})
    off_bytes, loaded, fell_back = both_ways(bad, monkeypatch)
    assert off_bytes == loaded
    failed = [c for c in off_bytes if not c[1]]
    assert [(c[0], c[3]) for c in failed] == [("readable", "model.layers.0.mlp.down_proj.weight")]
    assert "TQ2_0 code 3" in failed[0][2]


def test_blocks_with_different_d_load_as_floats(made, tmp_path, monkeypatch):
    t, used = _used_tq2_0_blocks(made["tq2_0"], "blk.0.attn_k.weight")
    at = t.offset + int(used[-1]) * 66 + 64
    bad = _patched(made["tq2_0"], tmp_path / "mixed-d.gguf", {at: np.float16(2.0).tobytes()})
    off_bytes, loaded, fell_back = both_ways(bad, monkeypatch)
    assert off_bytes == loaded
    assert fell_back == ["model.layers.0.self_attn.k_proj.weight"]
    assert not any(c[0] == "codes" and c[3] == "model.layers.0.self_attn.k_proj.weight" for c in off_bytes)


def test_a_d_of_two_with_the_scale_tensor_multiplies(made, tmp_path, monkeypatch):
    t = _gguf_tensor(made["tq2_0"], "blk.0.attn_k.weight")
    edits = {t.offset + b * 66 + 64: np.float16(2.0).tobytes() for b in range(t.nbytes // 66)}
    off_bytes, loaded, fell_back = both_ways(_patched(made["tq2_0"], tmp_path / "d2.gguf", edits), monkeypatch)
    assert off_bytes == loaded and fell_back == []
    scale = next(c for c in off_bytes if c[0] == "scale" and c[3] == "model.layers.0.self_attn.k_proj.weight")
    assert "torch.float64" in scale[2]


@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan"), float("inf")])
def test_a_bad_scale_in_i2_s_and_in_the_tq2_0_scale_tensor_fails_the_same_both_ways(made, tmp_path, monkeypatch, value):
    t = _gguf_tensor(made["i2_s-x86"], "blk.0.ffn_up.weight")
    n = math.prod(t.shape) // 4
    bad = _patched(made["i2_s-x86"], tmp_path / "i2s.gguf", {t.offset + n: struct.pack("<f", value)})
    off_bytes, loaded, _ = both_ways(bad, monkeypatch)
    assert off_bytes == loaded and [c[3] for c in off_bytes if not c[1]] == ["model.layers.0.mlp.up_proj.weight"]
    s = _gguf_tensor(made["tq2_0"], "blk.0.ffn_up.scale")
    bad = _patched(made["tq2_0"], tmp_path / "tq2.gguf", {s.offset: struct.pack("<f", value)})
    off_bytes, loaded, _ = both_ways(bad, monkeypatch)
    assert off_bytes == loaded and [c[3] for c in off_bytes if not c[1]]


def test_a_tq1_0_byte_no_trits_encode_fails_the_same_both_ways(made, tmp_path, monkeypatch):
    t = _gguf_tensor(made["tq1_0"], "blk.0.ffn_gate.weight")
    encoded = {-(-v * 256 // 243) for v in range(243)}  # ceil(v * 256 / 243): the bytes five trits encode to
    stray = next(b for b in range(256) if b not in encoded)
    bad = _patched(made["tq1_0"], tmp_path / "tq1.gguf", {t.offset + 54 + 3: bytes([stray])})
    off_bytes, loaded, _ = both_ways(bad, monkeypatch)
    assert off_bytes == loaded
    assert [(c[0], c[3]) for c in off_bytes if not c[1]] == [("readable", "model.layers.0.mlp.gate_proj.weight")]


def _bf16_at(path, name):
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for f in files:
        sf = SafetensorsFile(f)
        if name in sf.tensors:
            return f, sf.tensors[name].offset
    raise KeyError(name)


@pytest.mark.parametrize("value", [0.5, float("nan"), -0.0])
def test_a_recorded_bf16_weight_that_changed_is_checked_the_same_both_ways(made, tmp_path, monkeypatch, value):
    src = tmp_path / "changed"
    shutil.copytree(made["hf-bf16-recorded"], src)
    f, at = _bf16_at(src, "model.layers.1.self_attn.o_proj.weight")
    word = struct.pack("<f", value)[2:]  # bf16: the high half
    _patched(f, f, {at + 2 * 17: word})
    off_bytes, loaded, fell_back = both_ways(src, monkeypatch)
    assert off_bytes == loaded
    assert fell_back == ([] if value == 0 else ["model.layers.1.self_attn.o_proj.weight"])


def test_a_recorded_nanotron_weight_that_changed_fails_the_same_both_ways(made, tmp_path, monkeypatch):
    src = tmp_path / "nt"
    shutil.copytree(made["nanotron-recorded"], src)
    shard = next(p for p in sorted((src / "model/model").rglob("*.safetensors")) if "o_proj" in str(p))
    sf = SafetensorsFile(shard)
    _patched(shard, shard, {sf.tensors["data"].offset + 6: struct.pack("<f", 0.25)[2:]})
    off_bytes, loaded, fell_back = both_ways(src, monkeypatch)
    assert off_bytes == loaded
    bad = [c for c in off_bytes if not c[1]]
    assert [c[0] for c in bad] == ["readable"] and "no longer equals the ternary weight" in bad[0][2]


def _without_stored_bytes(monkeypatch):
    """Make verify_integrity load every tensor: each entry's stored() says nothing the checks can use."""
    import dataclasses

    from bitconvert.verify import integrity

    def opaque():
        return Stored(np.empty(0, dtype=np.uint8), "opaque")

    def opened(*args, **kwargs):
        ckpt = open_checkpoint(*args, **kwargs)
        for name, e in ckpt.tensors.items():
            ckpt.tensors[name] = dataclasses.replace(e, stored=opaque)
        return ckpt

    monkeypatch.setattr(integrity, "open_checkpoint", opened)


def _damaged(tmp_path, fixture: str):
    """A copy of ``fixture`` with a NaN in a dense tensor and, if packed, a code 3, a zero and an inf scale."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"].clone()
    tensors["model.norm.weight"][3] = float("nan")
    if "model.layers.0.mlp.up_proj.weight_scale" in tensors:
        tensors["model.layers.0.mlp.up_proj.weight"].view(-1)[5] = 0xFF
        tensors["model.layers.0.mlp.down_proj.weight_scale"].zero_()
        tensors["model.layers.1.mlp.down_proj.weight_scale"].fill_(float("inf"))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("fixture", PACKED + ["bitnet-2b4t-master", "onebitllms-bf16"])
@pytest.mark.parametrize("damaged", [False, True])
def test_hf_checks_off_stored_bytes_equal_the_checks_of_loaded_tensors(fixture, damaged, tmp_path, monkeypatch):
    # `upload --dry-run` checks stored bytes without decoding them: same checks, messages, figures and hashes
    from bitconvert.verify import verify_integrity

    src = _damaged(tmp_path, fixture) if damaged else FIXTURES / fixture

    def report():
        r = verify_integrity(src)
        return [(c.name, c.passed, c.detail, c.tensor, c.figure) for c in r.checks], r.manifest

    on_bytes = report()
    _without_stored_bytes(monkeypatch)
    assert on_bytes == report()
    failed = [c for c in on_bytes[0] if not c[1]]
    assert bool(failed) == damaged
    if damaged and fixture in PACKED:
        assert {c[3] for c in failed} == {
            "model.norm.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        }
