"""GGUF byte layouts from their definitions: TQ2_0 and TQ1_0 blocks (per-block d, canonical TQ1_0
bytes), the three I2_S layouts (x86, x86-rows, arm: round trips, hand-worked bytes, what each
cannot hold), llama's Q/K row permutation with the scale folded into d, and an I2_S file as
bitnet.cpp lays it out."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from conftest import FIXTURES, cli
from gguf_tools import random_codes, to_gguf

from bitconvert.convert import convert
from bitconvert.describe import describe_checkpoint
from bitconvert.errors import UsageError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import codecs, i2s_layouts, types
from bitconvert.formats.gguf.i2s_layouts import LAYOUTS, decode, encode, indistinguishable, layout_problem
from bitconvert.formats.gguf.names import permute_qk
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.ternary import LinearClass, as_ternary

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("kind", ["tq2_0", "tq1_0"])
def test_tq_decode_inverts_encode_with_per_block_d(kind):
    codes = random_codes(8, 512, seed=1)
    d = np.random.default_rng(1).random((8, 2), dtype=np.float32) + np.float32(0.5)
    enc, dec = {
        "tq2_0": (codecs.encode_tq2_0, codecs.decode_tq2_0),
        "tq1_0": (codecs.encode_tq1_0, codecs.decode_tq1_0),
    }[kind]
    back, d_back = dec(enc(codes, d), 512)
    assert np.array_equal(back, codes)
    assert d_back.dtype == np.float16 and np.array_equal(d_back, d.astype(np.float16))


def test_tq2_0_layout_matches_the_spec():
    # value j of a block: byte (j // 128) * 32 + j % 32, shift 2 * ((j % 128) // 32), code t + 1
    codes = random_codes(1, 256, seed=2)
    raw = codecs.encode_tq2_0(codes)[0]
    for j in range(256):
        byte, shift = (j // 128) * 32 + j % 32, 2 * ((j % 128) // 32)
        assert (raw[byte] >> shift) & 3 == codes[0, j] + 1
    assert raw[64:66].view(np.float16)[0] == 1.0


def test_tq1_0_canonical_bytes_are_exactly_what_the_encoder_writes():
    # every byte value, decoded and re-encoded: canonical iff it comes back unchanged
    block = codecs.encode_tq1_0(np.zeros((1, 256), dtype=np.int8)).copy()
    for pos in (0, 40, 49):  # a qs byte of the first and second group, a qh byte
        for value in range(256):
            raw = block.copy()
            raw[0, pos] = value
            codes, _ = codecs.decode_tq1_0(raw, 256)
            same = np.array_equal(codecs.encode_tq1_0(codes), raw)
            assert (codecs.tq1_0_first_noncanonical(raw, 256) is None) == same, (pos, value)


def test_i2_s_layout_matches_bitnet_cpp():
    # value j of each 128-block: byte j % 32, bits 6 - 2 * (j // 32); fp32 scale right after n/4 bytes
    codes = random_codes(4, 256, seed=3)
    raw = i2s_layouts.encode(codes, 0.0123, "x86")
    flat = codes.reshape(-1)
    assert raw.size == flat.size // 4 + 32
    for i, t in enumerate(flat):
        block, j = divmod(i, 128)
        assert (raw[block * 32 + j % 32] >> (6 - 2 * (j // 32))) & 3 == t + 1
    assert raw[256:260].view(np.float32)[0] == np.float32(0.0123)
    back, scale = i2s_layouts.decode(raw, (4, 256), "x86")
    assert np.array_equal(back, codes) and scale[0] == np.float32(0.0123)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_i2_s_layout_round_trips(layout):
    codes = random_codes(16, 384, seed=3)
    raw = encode(codes, 0.5, layout)
    back, scale = decode(raw, tuple(codes.shape), layout)
    assert back.dtype == np.int8 and np.array_equal(back, codes)
    assert scale.dtype == np.float32 and float(scale[0]) == 0.5


def test_the_i2_s_layouts_differ_and_a_wrong_layout_scrambles():
    codes = random_codes(8, 256, seed=4)
    raws = {lay: bytes(encode(codes, 1.0, lay)) for lay in LAYOUTS}
    assert len(set(raws.values())) == 3
    wrong, _ = decode(encode(codes, 1.0, "x86"), (8, 256), "arm")
    assert not np.array_equal(wrong, codes)
    assert not indistinguishable(encode(codes, 1.0, "x86"), (8, 256))


def test_a_constant_tensor_is_the_same_in_every_layout():
    zeros = np.zeros((8, 256), dtype=np.int8)
    assert indistinguishable(encode(zeros, 1.0, "x86"), (8, 256))


def test_the_hand_worked_arm_example_of_the_docs():
    """The example docs/gguf.md works by hand: 64 values 0..63 with code +1 only at value j = 17
    and -1 at j = 40. ARM: byte j % 16, shift 6 - 2 * (j // 16): j = 17 -> byte 1, shift 4,
    stored 2 -> byte 1 = 0b01_10_01_01 = 0x65; j = 40 -> byte 8, shift 2 (40 // 16 = 2), stored 0 ->
    byte 8 = 0b01_01_00_01 = 0x51; every other byte holds four zeros (stored 1) = 0x55."""
    codes = np.zeros((1, 64), dtype=np.int8)
    codes[0, 17], codes[0, 40] = 1, -1
    raw = encode(codes, 1.0, "arm")[:16].tolist()
    assert raw[1] == 0x65 and raw[8] == 0x51
    assert all(b == 0x55 for i, b in enumerate(raw) if i not in (1, 8))


def test_what_a_layout_cannot_hold_is_named():
    assert "multiple of 4" in layout_problem("x86-rows", (6, 256))
    assert "multiple of 128" in layout_problem("x86", (1, 64))
    assert layout_problem("arm", (1, 64)) is None
    with pytest.raises(ValueError, match="multiple of 4"):
        i2s_layouts.encode(np.zeros((6, 256), dtype=np.int8), 1.0, "x86-rows")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gguf_files_in_each_layout_read_back_and_say_so(tiny_checkpoint, layout, tmp_path):
    src = tiny_checkpoint("llama", "packed", hidden=128, intermediate=256)
    out = tmp_path / f"m-{layout}.gguf"
    convert(src, out, "gguf", {"gguf_type": "i2_s", "i2s_layout": layout})
    assert GGUFFile(out).get("bitconvert.i2s_layout") == layout
    a, b = open_checkpoint(src), open_checkpoint(out)
    for name in a.tensors:
        if a.is_quantized_linear(name):
            assert np.array_equal(a.tensors[name].load().codes, b.tensors[name].load().codes), name
    info = describe_checkpoint(out, stats=False)
    assert info["i2s_layout"] == layout
    shown = cli("inspect", out, "--no-stats")
    assert f"I2_S ({layout} layout)" in shown.stdout


def test_the_layout_option_is_refused_where_it_does_not_apply(tmp_path):
    with pytest.raises(UsageError, match="--i2s-layout applies to --gguf-type i2_s only"):
        convert(FIXTURES / "llama-packed", tmp_path / "a.gguf", "gguf", {"gguf_type": "tq2_0", "i2s_layout": "arm"})
    with pytest.raises(UsageError, match="--i2s-layout must be one of x86, x86-rows, arm"):
        convert(FIXTURES / "llama-packed", tmp_path / "a.gguf", "gguf", {"gguf_type": "i2_s", "i2s_layout": "neon"})
    assert not (tmp_path / "a.gguf").exists()  # shape refusals: test_what_a_layout_cannot_hold_is_named


def test_an_i2_s_file_is_laid_out_as_bitnet_cpp_reads_it(wide_checkpoint, tmp_path):
    to_gguf(wide_checkpoint["bitnet-2b4t-packed"], tmp_path / "m.gguf", "i2_s")
    f = GGUFFile(tmp_path / "m.gguf")
    assert f.get("general.architecture") == "bitnet-b1.58" and f.get("general.file_type") == 40
    assert f.tensors["token_embd.weight"].type == types.BF16  # the bf16 master's own type
    assert f.tensors["blk.0.attn_norm.weight"].type == types.F32
    t = f.tensors["blk.0.ffn_down.weight"]
    assert t.type == types.I2_S and t.nbytes == 256 * 512 // 4 + 32
    assert "output.weight" not in f.tensors and not any(n.endswith(".scale") for n in f.tensors)
    raw = f.read_bytes(t.name)
    ck = open_checkpoint(wide_checkpoint["bitnet-2b4t-packed"])
    tw = ck.tensors["model.layers.0.mlp.down_proj.weight"].load()
    assert raw[256 * 512 // 4 :][:4].view(np.float32)[0] == tw.scale.magnitude("F32")


def test_the_llama_architecture_permutes_q_k_and_folds_the_scale(wide_checkpoint, tmp_path):
    src = wide_checkpoint["llama-packed"]
    result = to_gguf(src, tmp_path / "m.gguf")
    assert any("folded" in w for w in result["warnings"])
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == "llama"
    assert "output.weight" in tensors and not any(n.endswith(".scale") for n in tensors)
    ck = open_checkpoint(src)
    for hf, gname, heads in (
        ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4),
        ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2),
    ):
        tw, _ = as_ternary(ck.tensors[hf].load(), LinearClass.AUTOBITLINEAR, "F64")
        deq = gguf.quants.dequantize(tensors[gname].data, Q.TQ2_0)
        d = np.float16(tw.scale.item())
        # independent of our permute_qk: row r of head h, half i -> row h*D + 2*r + i
        rows = tw.codes.shape[0]
        hd = rows // heads
        expect = np.empty((rows, tw.codes.shape[1]), dtype=np.float32)
        c = tw.codes.astype(np.float32)
        for h in range(heads):
            for r in range(hd // 2):
                for i in range(2):
                    expect[h * hd + 2 * r + i] = c[h * hd + i * hd // 2 + r]
        assert np.array_equal(deq, expect * np.float32(d)), hf
        assert np.array_equal(permute_qk(tw.codes, heads), expect.astype(np.int8))
