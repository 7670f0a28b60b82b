"""Codes straight from bf16 bit patterns (a threshold instead of float arithmetic) and the encoders fed
from them give exactly what quantizing to int8 codes and encoding them gives: on ties at the zero
threshold, zeros, subnormals, the largest bf16 values, tiny tensors whose mean is floored, with and
without numba, on one thread or two; whole GGUF files do not change by a byte."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.formats.gguf import codecs, i2s_layouts, production, types
from bitconvert.formats.gguf.names import permute_qk
from bitconvert.ternary import LinearClass, quantize
from bitconvert.ternary.fast import jit
from bitconvert.ternary.fast.bf16_codes import bf16_code_rows
from bitconvert.ternary.quantize import bf16_scale_threshold

Q = gguf.GGMLQuantizationType


def _bf16(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def _ties() -> torch.Tensor:
    """mean|W| exactly 1 (s = 1), so 0.5 is a tie (rounds to 0) and its bf16 neighbours step."""
    vals = []
    for a, b in ((0.5, 1.5), (0.5078125, 1.4921875), (0.4921875, 1.5078125)):  # each pair sums to 2
        vals += [a, b, -a, -b]
    return torch.tensor(vals * 256, dtype=torch.bfloat16).reshape(12, 256)


def _weights() -> dict[str, Dense]:
    """The weights below as numpy bf16 words (built in torch, which has bf16)."""
    return {name: Dense.from_torch(w) for name, w in _torch_weights().items()}


def _torch_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    normal = (torch.randn(64, 512, generator=g) * 0.02).to(torch.bfloat16)
    edge = normal.clone()
    edge[0, :8] = _bf16([0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x807F, 0x0080, 0x8080])  # zeros, subnormals
    huge = normal.clone()
    huge[1, :4] = _bf16([0x7F7F, 0xFF7F, 0x7F7E, 0xFF7E])  # the largest finite bf16 values: the mean overflows
    tiny = (torch.randn(16, 256, generator=g) * 1e-8).to(torch.bfloat16)  # mean below the 1e-5 floor
    tiny[0, :4] = _bf16([0x0001, 0x8001, 0x0000, 0x8000])
    zeros = torch.zeros(8, 256, dtype=torch.bfloat16)
    return {"normal": normal, "ties": _ties(), "edge": edge, "huge": huge, "tiny": tiny, "zeros": zeros}


@pytest.mark.parametrize("name", sorted(_weights()))
def test_codes_from_bits_are_the_quantized_codes(name):
    w = _weights()[name]
    if name == "ties":
        assert torch.equal(_torch_weights()[name].float().abs().mean(), torch.tensor(1.0))
    m, threshold = bf16_scale_threshold(w)
    tw = quantize(w, LinearClass.AUTOBITLINEAR, "F32")
    assert np.float32(m).tobytes() == tw.scale.data
    if threshold is None:  # only where the bit-pattern path does not apply (an overflowing mean)
        assert name == "huge"
        return
    rows = bf16_code_rows(w.data, threshold)
    got = np.concatenate([rows(r, min(r + 3, w.shape[0])).copy() for r in range(0, w.shape[0], 3)])
    assert np.array_equal(got.view(np.int8), tw.codes)


@pytest.mark.parametrize("qtype", [Q.TQ2_0, Q.TQ1_0])
@pytest.mark.parametrize("heads", [None, 2])
@pytest.mark.parametrize("name", ["normal", "ties", "edge", "tiny", "zeros"])
def test_tq_bytes_from_bits_equal_encoding_the_codes(qtype, heads, name):
    w = _weights()[name]
    t = types.TYPES[int(qtype)]
    tw = quantize(w, LinearClass.AUTOBITLINEAR, "F64")
    codes = permute_qk(tw.codes, heads) if heads else tw.codes
    d = np.float16(np.float32(tw.scale.item()))  # float64 -> fp16 through float32, as torch rounds
    _, threshold = bf16_scale_threshold(w)
    order = permute_qk(np.arange(w.shape[0]), heads) if heads else None
    fast = t.encode_rows(bf16_code_rows(w.data, threshold, order), *w.shape, d)
    assert np.array_equal(fast, t.encode(codes, d))
    # and gguf-py reads back the permuted codes times d
    deq = gguf.quants.dequantize(fast, qtype)
    assert np.array_equal(deq, codes.astype(np.float32) * np.float32(d))


@pytest.mark.parametrize("layout", ["x86", "arm"])
@pytest.mark.parametrize("name", ["normal", "ties", "edge", "tiny", "zeros"])
def test_i2_s_bytes_from_bits_equal_encoding_the_codes(layout, name):
    w = _weights()[name]
    tw = quantize(w, LinearClass.AUTOBITLINEAR, "F32")
    scale = tw.scale.item()
    _, threshold = bf16_scale_threshold(w)
    assert i2s_layouts.encodes_rows(layout, w.shape[1])
    fast = i2s_layouts.encode_rows(bf16_code_rows(w.data, threshold), *w.shape, scale, layout)
    assert np.array_equal(fast, i2s_layouts.encode(tw.codes, scale, layout))


@pytest.mark.parametrize("path", ["compiled", "numpy"])
def test_tq2_0_lane_packing_matches_gguf_py_on_every_code_pattern(path, monkeypatch):
    # every 4-code combination at every plane position, and -1 (byte 255) next to each lane edge;
    # the compiled packer (numba) and the 64-bit lane arithmetic (numpy) alike
    if path == "compiled":
        monkeypatch.setattr(jit, "MIN_VALUES", 0)
        assert jit.kernels() is not None
    else:
        monkeypatch.setattr(jit, "kernels", lambda values=None: None)
    combos = (np.indices((3,) * 4).reshape(4, -1).T - 1).astype(np.int8)  # [81, 4]
    codes = np.ascontiguousarray(np.tile(combos, (256 * 4 // 81 + 1, 1))[: 256 * 4].T.reshape(16, 256))
    ours = codecs.encode_tq2_0(codes, 1.0)
    theirs = gguf.quants.quantize(codes.astype(np.float32), Q.TQ2_0)
    assert np.array_equal(ours, theirs)
    for layout in ("x86", "arm"):
        raw = codes.view(np.uint8)
        fast = i2s_layouts.encode_rows(lambda r0, r1: raw[r0:r1], 16, 256, 0.5, layout)
        assert np.array_equal(fast, i2s_layouts.encode(codes, 0.5, layout)), layout


@pytest.mark.parametrize("qtype", [Q.TQ2_0, Q.TQ1_0])
def test_encoding_split_over_two_threads_matches_gguf_py(qtype, monkeypatch):
    codes = np.random.default_rng(11).integers(-1, 2, (1024, 2048)).astype(np.int8)  # 32 steps: split in two
    enc = types.TYPES[int(qtype)].encode
    threads = []
    real = codecs._split
    monkeypatch.setattr(codecs, "_split", lambda steps, f: threads.append(len(steps)) or real(steps, f))
    ours = enc(codes, 1.0)
    assert threads == [32] and len(codecs._row_steps(1024, 2048)) >= codecs._SPLIT_MIN_STEPS
    assert np.array_equal(ours, gguf.quants.quantize(codes.astype(np.float32), qtype))
    monkeypatch.setattr(codecs, "_SPLIT_MIN_STEPS", 10**9)  # one thread: the same bytes
    assert np.array_equal(enc(codes, 1.0), ours)


def test_i2_s_split_over_two_threads_matches_the_reference_layouts():
    codes = np.random.default_rng(12).integers(-1, 2, (1024, 2048)).astype(np.int8)
    raw = codes.view(np.uint8)
    assert len(codecs._row_steps(1024, 2048)) >= codecs._SPLIT_MIN_STEPS
    for layout in ("x86", "arm"):
        fast = i2s_layouts.encode_rows(lambda r0, r1: raw[r0:r1], 1024, 2048, 0.5, layout)
        assert np.array_equal(fast, i2s_layouts.encode(codes, 0.5, layout)), layout


def test_rows_of_a_large_weight_are_the_same_with_and_without_numba(monkeypatch):
    g = torch.Generator().manual_seed(13)
    t = (torch.randn(1024, 1024, generator=g) * 0.02).to(torch.bfloat16)  # numba's size
    t[0, :6] = _bf16([0x0000, 0x8000, 0x0001, 0x8001, 0x7F7E & 0x3FFF, 0xBF00])
    w = Dense.from_torch(t)
    _, threshold = bf16_scale_threshold(w)
    order = permute_qk(np.arange(1024), 8)

    def codes(rows) -> np.ndarray:
        return np.concatenate([rows(r, min(r + 100, 1024)).copy() for r in range(0, 1024, 100)])

    with_jit = [codes(bf16_code_rows(w.data, threshold, o)) for o in (None, order)]
    monkeypatch.setattr(jit, "kernels", lambda values=None: None)
    without = [codes(bf16_code_rows(w.data, threshold, o)) for o in (None, order)]
    expect = quantize(w, LinearClass.AUTOBITLINEAR).codes
    assert np.array_equal(without[0].view(np.int8), expect)
    assert np.array_equal(without[1].view(np.int8), permute_qk(expect, 8))
    assert all(np.array_equal(a, b) for a, b in zip(with_jit, without))


@pytest.mark.parametrize("kind", ["bitnet-2b4t", "llama"])
@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "i2_s:arm"])
def test_a_gguf_file_is_byte_identical_to_the_int8_codes_path(tiny_checkpoint, tmp_path, monkeypatch, kind, gguf_type):
    gguf_type, _, layout = gguf_type.partition(":")
    options = {"gguf_type": gguf_type, **({"i2s_layout": layout} if layout else {})}
    calls = []
    real = production._ternary_from_bits
    monkeypatch.setattr(production, "_ternary_from_bits", lambda *a: calls.append(made := real(*a)) or made)
    fast, slow = tmp_path / "fast" / "m.gguf", tmp_path / "slow" / "m.gguf"  # the name is recorded
    fast.parent.mkdir(), slow.parent.mkdir()
    master = tiny_checkpoint(kind, "master", wide=True)
    convert(master, fast, "gguf", options)
    assert len(calls) == 14 and all(made is not None for made in calls)  # every linear took the fast path
    monkeypatch.setattr(production, "_ternary_from_bits", lambda *a: None)
    convert(master, slow, "gguf", options)
    assert fast.read_bytes() == slow.read_bytes()
