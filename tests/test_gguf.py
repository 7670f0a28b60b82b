"""GGUF: codecs against gguf-py, exact round trips, llama.cpp-converted files, metadata, CLI errors."""

from __future__ import annotations

import json
import math
import struct
import time
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import FIXTURES, make_checkpoint, read_all, run_cli

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.errors import CheckpointError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import codecs, i2s_layouts, types
from bitconvert.formats.gguf.names import permute_qk
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.model.checkpoint import as_dense
from bitconvert.ternary import LinearClass, TernaryWeight, absmean_quantize, as_ternary

KINDS = ("1bitllm", "bitnet-2b4t", "llama")
DIMS = dict(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2)  # TQ rows: multiples of 256
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Packed and master checkpoints whose rows are multiples of 256 (what TQ types need)."""
    root = tmp_path_factory.mktemp("gguf-models")
    out = {}
    for kind in KINDS:
        for layout in ("packed", "master"):
            out[f"{kind}-{layout}"] = make_checkpoint(
                root / f"{kind}-{layout}", kind, layout, **DIMS, seed=3
            )
    return out


def to_gguf(src: Path, dst: Path, gguf_type: str = "tq2_0", **extra) -> dict:
    opts = {"gguf_type": gguf_type, **extra}
    return convert(src, dst, "gguf", opts).to_dict()


def random_codes(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (rows, cols)).astype(np.int8)


# --- codecs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.TQ2_0, Q.TQ1_0])
def test_tq_encoding_is_byte_identical_to_gguf_py(qtype):
    codes = random_codes(48, 1024)
    codes[3, :256] = 0  # an all-zero block
    enc = codecs.encode_tq2_0 if qtype == Q.TQ2_0 else codecs.encode_tq1_0
    ours = enc(codes, 1.0)
    theirs = gguf.quants.quantize(codes.astype(np.float32), qtype)
    # gguf-py sets d = max|block|, i.e. 0 for the all-zero block; every other byte must agree.
    bsize = types.TYPES[int(qtype)].block_bytes
    theirs_d1 = theirs.reshape(48, 4, bsize).copy()
    theirs_d1[3, 0, -2:] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    assert np.array_equal(ours, theirs_d1.reshape(48, -1))
    assert np.array_equal(gguf.quants.dequantize(ours, qtype), codes.astype(np.float32))


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


def test_q8_0_is_byte_identical_to_gguf_py():
    x = torch.randn(16, 256) * 3
    x[0, :32] = 0
    x[1, 5] = 0.5 * (x[1, :32].abs().max() / 127)  # a value that lands on .5 after scaling
    assert np.array_equal(codecs.encode_q8_0(Dense.from_torch(x)), gguf.quants.quantize(x.numpy(), Q.Q8_0))


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "f16"])
def test_packed_gguf_packed_is_byte_identical(models, tmp_path, kind, gguf_type):
    src = models[f"{kind}-packed"]
    to_gguf(src, tmp_path / "m.gguf", gguf_type, embed_type="bf16")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a, b = read_all(src), read_all(tmp_path / "back")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    cfg_a = json.loads((src / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg_b["quantization_config"]["linear_class"] == cfg_a["quantization_config"]["linear_class"]


def test_default_embedding_type_keeps_every_tensor_exactly(models, tmp_path):
    """token_embd and an untied output keep the source's bf16 by default: the round trip is exact."""
    src = models["llama-packed"]
    to_gguf(src, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a, b = read_all(src), read_all(tmp_path / "back")
    for name in a:
        if name.endswith(("_proj.weight", "weight_scale")) or name == "lm_head.weight":
            assert torch.equal(a[name], b[name]), name


def test_an_embedding_type_that_rounds_is_said(models, tmp_path):
    """--embed-type f16 on a bf16 source rounds the values F16 cannot hold (here the subnormal ones of
    the untied output): the conversion counts them per tensor; bf16 holds every value."""
    r = convert(models["llama-packed"], tmp_path / "f16.gguf", "gguf", {"embed_type": "f16"})
    said = [w for w in r.report.warnings if "values change when stored as F16" in w]
    assert said and all(w.startswith(("lm_head.weight (output.weight)", "model.embed_tokens.weight")) for w in said), said
    r = convert(models["llama-packed"], tmp_path / "bf16.gguf", "gguf", {"embed_type": "bf16"})
    assert not any("values change" in w for w in r.report.warnings), r.report.warnings


def test_master_is_quantized_like_transformers(models, tmp_path):
    src = models["bitnet-2b4t-master"]
    to_gguf(src, tmp_path / "m.gguf")
    ck = open_checkpoint(tmp_path / "m.gguf")
    master = read_all(src)
    for name in ck.config.quantized_linear_names():
        tw = ck.tensors[name].load()
        codes, mean_abs = absmean_quantize(Dense.from_torch(master[name]))
        assert np.array_equal(tw.codes, codes), name
        assert tw.scale.dtype_name == "F32" and tw.scale.item() == float(mean_abs)


# --- cross-check with gguf-py's reader ----------------------------------------------------------


@pytest.mark.parametrize("gguf_type,qtype", [("tq2_0", Q.TQ2_0), ("tq1_0", Q.TQ1_0)])
def test_gguf_py_dequantizes_our_file_to_codes_times_scale(models, tmp_path, gguf_type, qtype):
    src = models["1bitllm-packed"]
    to_gguf(src, tmp_path / "m.gguf", gguf_type)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    ck = open_checkpoint(src)
    checked = 0
    for hf in ck.config.quantized_linear_names():
        gname = hf.replace("model.layers.", "blk.").replace("self_attn.q_proj", "attn_q").replace(
            "self_attn.k_proj", "attn_k").replace("self_attn.v_proj", "attn_v").replace(
            "self_attn.o_proj", "attn_output").replace("mlp.gate_proj", "ffn_gate").replace(
            "mlp.up_proj", "ffn_up").replace("mlp.down_proj", "ffn_down")  # fmt: skip
        t, s = tensors[gname], tensors[gname.removesuffix(".weight") + ".scale"]
        assert t.tensor_type == qtype and s.tensor_type == Q.F32 and list(s.shape) == [1]
        tw, _ = as_ternary(ck.tensors[hf].load(), LinearClass.AUTOBITLINEAR, "F32")
        deq = gguf.quants.dequantize(t.data, qtype) * s.data.reshape(())
        expect = tw.codes.astype(np.float32) * np.float32(tw.scale.item())
        assert deq.shape == expect.shape and np.array_equal(deq, expect), hf
        checked += 1
    assert checked == 14
    fields = reader.fields
    assert fields["general.architecture"].contents() == "bitnet"
    assert "output.weight" not in tensors
    assert tensors["token_embd.weight"].tensor_type == Q.BF16  # the bf16 master's own type
    assert tensors["blk.0.attn_norm.weight"].tensor_type == Q.F32
    assert tensors["blk.0.ffn_sub_norm.weight"].tensor_type == Q.F32
    assert fields["general.quantized_by"].contents().startswith("bitconvert ")
    assert fields["general.file_type"].contents() == {"tq2_0": 37, "tq1_0": 36}[gguf_type]


def test_metadata_llama_cpp_reads(models, tmp_path):
    src = models["bitnet-2b4t-packed"]
    to_gguf(src, tmp_path / "m.gguf")
    f = gguf.GGUFReader(tmp_path / "m.gguf").fields
    cfg = json.loads((src / "config.json").read_text())
    want = {
        "bitnet.context_length": cfg["max_position_embeddings"],
        "bitnet.embedding_length": 256,
        "bitnet.block_count": 2,
        "bitnet.feed_forward_length": 512,
        "bitnet.attention.head_count": 4,
        "bitnet.attention.head_count_kv": 2,
        "bitnet.rope.dimension_count": 64,
        "bitnet.vocab_size": cfg["vocab_size"],
        "bitnet.hidden_activation": "relu2",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.bos_token_id": cfg["bos_token_id"],
        "tokenizer.ggml.eos_token_id": cfg["eos_token_id"],
    }
    for key, value in want.items():
        assert f[key].contents() == value, key
    assert f["bitnet.rope.freq_base"].contents() == cfg["rope_theta"]
    assert math.isclose(f["bitnet.attention.layer_norm_rms_epsilon"].contents(), cfg["rms_norm_eps"], rel_tol=1e-6)
    tok = json.loads((src / "tokenizer.json").read_text())
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg["vocab_size"]
    for text, tid in tok["model"]["vocab"].items():
        assert tokens[tid] == text
    types = f["tokenizer.ggml.token_type"].contents()
    assert types[cfg["bos_token_id"]] == 3 and types[0] == 1
    assert f["tokenizer.ggml.merges"].contents() == [" ".join(m) for m in tok["model"]["merges"]]
    assert "{{ bos_token }}" in f["tokenizer.chat_template"].contents()


def test_llama_arch_permutes_q_k_and_folds_the_scale(models, tmp_path):
    src = models["llama-packed"]
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


# --- llama.cpp-converted files ----------------------------------------------------------------------


def _write_like_llama_cpp(path: Path, ckpt_dir: Path, perturb: bool = False) -> dict[str, TernaryWeight]:
    """A bitnet GGUF as llama.cpp's converter makes it: codes x scale in float, TQ2_0 via gguf-py,
    so every block's d is max|x| (fp16) and all-zero blocks get d = 0; no .scale tensors."""
    ck = open_checkpoint(ckpt_dir)
    w = gguf.GGUFWriter(path, "bitnet")
    cfg = ck.config
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab_size)
    truth = {}
    for hf, e in ck.tensors.items():
        gname = {
            "model.embed_tokens.weight": "token_embd.weight",
            "model.norm.weight": "output_norm.weight",
        }.get(hf)
        if gname is None:
            layer, rest = hf.removeprefix("model.layers.").split(".", 1)
            short = {
                "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
                "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
                "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
                "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
                "self_attn.inner_attn_ln.weight": "attn_sub_norm", "mlp.ffn_layernorm.weight": "ffn_sub_norm",
            }[rest]  # fmt: skip
            gname = f"blk.{layer}.{short}.weight"
        value = e.load()
        if ck.is_quantized_linear(hf):
            tw, _ = as_ternary(value, LinearClass.AUTOBITLINEAR, "F32")
            codes = tw.codes.copy()
            codes[0, :256] = 0  # an all-zero block: ggml writes d = 0 there
            truth[hf] = TernaryWeight(codes, tw.scale)
            x = codes.astype(np.float32) * np.float32(tw.scale.item())
            if perturb and hf.endswith("0.self_attn.q_proj.weight"):
                x[1, :256] *= 2
            w.add_tensor(gname, gguf.quants.quantize(x, Q.TQ2_0), raw_dtype=Q.TQ2_0)
        else:
            w.add_tensor(gname, as_dense(value, "F32").data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return truth


def test_reads_llama_cpp_folded_scales(models, tmp_path):
    path = tmp_path / "llamacpp.gguf"
    truth = _write_like_llama_cpp(path, models["1bitllm-packed"])
    ck = open_checkpoint(path)
    assert ck.config.family.key == "1bitllm"
    for hf, want in truth.items():
        tw = ck.tensors[hf].load()
        assert isinstance(tw, TernaryWeight), hf
        assert np.array_equal(tw.codes, want.codes), hf
        assert tw.scale.dtype_name == "F16" and tw.scale.item() == want.scale.magnitude("F16")


def test_reads_unequal_block_scales_as_float_and_says_why(models, tmp_path):
    path = tmp_path / "llamacpp.gguf"
    _write_like_llama_cpp(path, models["1bitllm-packed"], perturb=True)
    ck = open_checkpoint(path)
    w = ck.tensors["model.layers.0.self_attn.q_proj.weight"].load()
    assert isinstance(w, Dense) and w.dtype_name == "F32"
    assert any("model.layers.0.self_attn.q_proj.weight" in n and "different scales" in n for n in ck.notes)


def test_gguf_tokenizer_rebuilt_as_tokenizer_json(models, tmp_path):
    from tokenizers import Tokenizer

    src = models["1bitllm-packed"]
    to_gguf(src, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a = Tokenizer.from_file(str(src / "tokenizer.json"))
    b = Tokenizer.from_file(str(tmp_path / "back" / "tokenizer.json"))
    text = (FIXTURES / "tokenizer" / "tokenizer.json").read_text()[:3000] + " Hello world! 3.14159 <|eot_id|>"
    assert a.encode(text).ids == b.encode(text).ids
    tcfg = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert tcfg["bos_token"] == "<|begin_of_text|>" and "chat_template" in tcfg


def test_gguf_to_gguf_keeps_the_tokenizer_and_codes(models, tmp_path):
    to_gguf(models["1bitllm-packed"], tmp_path / "a.gguf", "i2_s")
    to_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "tq1_0")
    fa, fb = GGUFFile(tmp_path / "a.gguf"), GGUFFile(tmp_path / "b.gguf")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        assert fa.get(key) == fb.get(key), key
    a, b = open_checkpoint(tmp_path / "a.gguf"), open_checkpoint(tmp_path / "b.gguf")
    for name in a.config.quantized_linear_names():
        ta, tb = a.tensors[name].load(), b.tensors[name].load()
        assert np.array_equal(ta.codes, tb.codes) and ta.scale.same_as(tb.scale)


def test_i2_s_file_layout(models, tmp_path):
    to_gguf(models["bitnet-2b4t-packed"], tmp_path / "m.gguf", "i2_s")
    f = GGUFFile(tmp_path / "m.gguf")
    assert f.get("general.architecture") == "bitnet-b1.58" and f.get("general.file_type") == 40
    assert f.tensors["token_embd.weight"].type == types.BF16  # the bf16 master's own type
    assert f.tensors["blk.0.attn_norm.weight"].type == types.F32
    t = f.tensors["blk.0.ffn_down.weight"]
    assert t.type == types.I2_S and t.nbytes == 256 * 512 // 4 + 32
    assert "output.weight" not in f.tensors and not any(n.endswith(".scale") for n in f.tensors)
    raw = f.read_bytes(t.name)
    ck = open_checkpoint(models["bitnet-2b4t-packed"])
    tw = ck.tensors["model.layers.0.mlp.down_proj.weight"].load()
    assert raw[256 * 512 // 4 :][:4].view(np.float32)[0] == tw.scale.magnitude("F32")


# --- CLI ------------------------------------------------------------------------------------------


def test_rows_not_multiple_of_256_fail_naming_the_tensor(tmp_path):
    dst = tmp_path / "m.gguf"
    r = run_cli("convert", FIXTURES / "1bitllm-packed", dst, "--to", "gguf")
    assert r.returncode == 1, r.stderr
    assert "model.layers.0.self_attn.q_proj.weight" in r.stderr and "256" in r.stderr and "--allow-fallback" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 3
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_allow_fallback_writes_f16_and_lists_tensors(tmp_path):
    dst = tmp_path / "m.gguf"
    result = to_gguf(FIXTURES / "1bitllm-packed", dst, allow_fallback=True)
    assert any("written as F16" in w and "model.layers.1.mlp.down_proj.weight" in w for w in result["warnings"])
    f = GGUFFile(dst)
    assert f.tensors["blk.0.attn_q.weight"].type == types.F16 and "blk.0.attn_q.scale" in f.tensors
    a, b = open_checkpoint(FIXTURES / "1bitllm-packed"), open_checkpoint(dst)
    for name in a.config.quantized_linear_names():
        ta, tb = a.tensors[name].load(), b.tensors[name].load()
        assert np.array_equal(ta.codes, tb.codes) and ta.scale.same_as(tb.scale), name


def test_bad_gguf_type_is_a_usage_error(tmp_path):
    r = run_cli("convert", FIXTURES / "1bitllm-packed", tmp_path / "m.gguf", "--to", "gguf", "--gguf-type", "q4_0")
    assert r.returncode == 2 and "--gguf-type" in r.stderr and "tq2_0" in r.stderr


def test_inspect_reads_gguf(models, tmp_path):
    from bitconvert.describe import describe_checkpoint

    to_gguf(models["1bitllm-packed"], tmp_path / "m.gguf", "tq1_0")
    info = describe_checkpoint(tmp_path / "m.gguf")
    assert info["format"] == "gguf" and info["ternary_tensors"] == 14
    row = next(t for t in info["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert row["stored"].startswith("TQ1_0") and abs(sum(row["codes"].values()) - 1) < 1e-9


# --- hardening ------------------------------------------------------------------------------------


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
def test_malformed_header_fails_fast_in_little_memory(tmp_path, case):
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


def test_gguf_py_hangs_where_we_fail_fast_documented(tmp_path):
    # a 52-byte file declaring an array of 2**62 u32 items, rejected from its length alone
    data = _header(0, 1) + _s("a") + struct.pack("<IIQ", 9, 4, 2**62)
    assert len(data) <= 52
    path = tmp_path / "bomb.gguf"
    path.write_bytes(data)
    r = run_cli("inspect", path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bomb.gguf" in r.stderr


def test_truncated_real_file_and_bad_codes(models, tmp_path):
    to_gguf(models["1bitllm-packed"], tmp_path / "m.gguf")
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


def test_unquantized_linears_stay_dense_and_in_order(models, tmp_path):
    # modules_to_not_convert: such a linear is written F16 and, in the llama architecture, its
    # Q/K rows are permuted like the ternary ones; reading undoes it.
    src = tmp_path / "src"
    make_checkpoint(src, "llama", "master", **DIMS, seed=4)
    cfg = json.loads((src / "config.json").read_text())
    keep = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]
    cfg["quantization_config"] = {"quant_method": "bitnet", "modules_to_not_convert": keep}
    (src / "config.json").write_text(json.dumps(cfg))
    to_gguf(src, tmp_path / "m.gguf")
    f = GGUFFile(tmp_path / "m.gguf")
    assert f.tensors["blk.0.attn_q.weight"].type == types.F16 and f.tensors["blk.1.attn_k.weight"].type == types.F16
    assert f.tensors["blk.1.attn_q.weight"].type == types.TQ2_0
    master = read_all(src)
    stored = f.read_float("blk.0.attn_q.weight")
    want = permute_qk(master["model.layers.0.self_attn.q_proj.weight"].to(torch.float16).numpy(), 4)
    assert stored.dtype_name == "F16" and np.array_equal(stored.data, want)
    ck = open_checkpoint(tmp_path / "m.gguf")
    for name in (m + ".weight" for m in keep):
        back = ck.tensors[name].load()
        assert isinstance(back, Dense) and torch.equal(back.torch(), master[name].to(torch.float16)), name


def test_failure_mid_stream_leaves_nothing(models, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(models["1bitllm-packed"], src)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"][5, 7] = 0xFF  # code 3: found only when loaded
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="code 3"):
        to_gguf(src, out / "m.gguf")
    assert list(out.iterdir()) == []


# --- the type table -------------------------------------------------------------------------------


def test_type_table_agrees_with_gguf_py_and_the_codecs():
    # ids and sizes are gguf-py's; each codec writes exactly the bytes the record says
    for t in types.TYPES.values():
        if t.id in (types.I2_S, types.TL1, types.TL2):
            continue  # bitnet.cpp's types: gguf-py has no id 36, and 38/39 are other types there
        q = Q(t.id)
        assert q.name == t.name and gguf.GGML_QUANT_SIZES[q] == (t.block, t.block_bytes)
    codes = random_codes(4, 512, seed=7)
    values = Dense.of(codes.astype(np.float32) * 127)  # exact in every float type, Q8_0 included (d = 1)
    for t in (t for t in types.TYPES.values() if not t.tiled):  # TL: tests/conversion/test_tl_gguf.py
        data = t.encode(codes, 1.0) if t.kind == "ternary" else t.encode(values)
        assert data.dtype == np.uint8 and data.size == t.nbytes((4, 512)), t.name
        if t.kind == "ternary":
            back, _ = t.decode_codes(data.reshape(-1), (4, 512))
            assert np.array_equal(back, codes) and t.first_invalid(data.reshape(-1), (4, 512)) is None
        else:
            assert np.array_equal(t.decode_values(data.reshape(-1), (4, 512)).float32(), values.data), t.name


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


def test_non_canonical_tq1_0_is_one_line_error(models, tmp_path):
    to_gguf(models["1bitllm-packed"], tmp_path / "m.gguf", "tq1_0")
    data = bytearray((tmp_path / "m.gguf").read_bytes())
    t = GGUFFile(tmp_path / "m.gguf").tensors["blk.1.ffn_up.weight"]
    data[t.offset + 54 * 5 + 3] = 1  # byte 1 in qs: no five trits encode to it
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    r = run_cli("convert", tmp_path / "bad.gguf", tmp_path / "out", "--to", "hf-packed")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "blk.1.ffn_up.weight" in lines[0] and "TQ1_0" in lines[0] and "canonical" in lines[0]
    assert not (tmp_path / "out").exists()


# --- hostile metadata, through the CLI ------------------------------------------------------------


def rewrite_gguf(src: Path, dst: Path, changes: dict) -> Path:
    """``src`` with metadata keys replaced (a KV) or removed (None); tensors copied byte for byte."""
    from bitconvert.formats.gguf.stream_writer import GGUFStreamWriter, PlannedGGUFTensor

    f = GGUFFile(src)
    md = dict(f.metadata)
    for key, kv in changes.items():
        if kv is None:
            md.pop(key, None)
        else:
            md[key] = kv
    plan = [PlannedGGUFTensor(t.name, t.type, t.shape) for t in f.tensors.values()]
    with GGUFStreamWriter(dst, md, plan) as w:
        for t in f.tensors.values():
            w.write(t.name, f.read_bytes(t.name))
    return dst


def one_line_failure(r, *words: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def good_gguf(models, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "m.gguf"
    to_gguf(models["bitnet-2b4t-packed"], path)
    return path


def _kv(kind: str, value):
    from bitconvert.formats.gguf import stream_writer as sw

    return {"u32": sw.kv_u32, "str": sw.kv_str, "f32": sw.kv_f32, "strs": sw.kv_strs}[kind](value)


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
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {k: v and _kv(*v) for k, v in changes.items()})
    one_line_failure(run_cli("inspect", bad, "--no-stats"), str(bad), *words)


def test_forged_block_count_is_refused_fast_in_little_memory(good_gguf, tmp_path):
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"bitnet.block_count": _kv("u32", 10**9)})
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="block_count is 1000000000") as info:
        open_checkpoint(bad)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 100 * 2**20, (elapsed, peak)
    assert "tensors" in str(info.value)
    one_line_failure(run_cli("convert", bad, tmp_path / "out", "--to", "hf-packed"), "block_count")
    assert not (tmp_path / "out").exists()


def test_token_that_is_not_utf8_is_one_line(good_gguf, tmp_path):
    tokens = list(GGUFFile(good_gguf).get("tokenizer.ggml.tokens"))
    tokens[7] = b"ab\xffcd".decode("utf-8", "surrogateescape")  # stored as those raw bytes
    bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"tokenizer.ggml.tokens": _kv("strs", tokens)})
    assert b"ab\xffcd" in bad.read_bytes()
    r = run_cli("convert", bad, tmp_path / "out", "--to", "hf-packed")
    one_line_failure(r, "tokenizer.ggml.tokens item 7", "UTF-8")
    assert not (tmp_path / "out").exists()


def test_unreadable_embedded_config_falls_back_to_the_gguf_keys(good_gguf, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for text in (deep, '{"hidden_size": 1e400}', "[1]", '{"num_attention_heads": 0}'):
        bad = rewrite_gguf(good_gguf, tmp_path / "bad.gguf", {"bitconvert.hf_config": _kv("str", text)})
        ck = open_checkpoint(bad)
        assert ck.config.num_hidden_layers == 2
        assert any("ignored unreadable bitconvert.hf_config" in n for n in ck.notes), text[:20]
        bad.unlink()


def test_unreadable_tokenizer_json_is_an_error_unless_no_tokenizer(models, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(models["1bitllm-packed"], src)
    (src / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    out = tmp_path / "m.gguf"
    r = run_cli("convert", src, out, "--to", "gguf")
    one_line_failure(r, "tokenizer.json", "--no-tokenizer")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    r = run_cli("convert", src, out, "--to", "gguf", "--no-tokenizer")
    assert r.returncode == 0, r.stderr
    f = GGUFFile(out)
    # no vocabulary, said so: llama.cpp and bitnet.cpp load no GGUF without tokenizer.ggml.model
    assert {k: v.value for k, v in f.metadata.items() if k.startswith("tokenizer.")} == {"tokenizer.ggml.model": "no_vocab"}
    r = run_cli("convert", src, tmp_path / "x", "--to", "hf-packed", "--no-tokenizer")
    assert r.returncode == 2 and "--no-tokenizer" in r.stderr


# --- families as data, the entry contract, no torch ------------------------------------------------


def test_family_records_name_their_tensors_as_gguf_py_does():
    # the records hold the GGUF names; gguf-py's table is where they come from
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

    from bitconvert.model.families import FAMILIES, GLOBAL_GGUF

    archs = {name: arch for arch, name in MODEL_ARCH_NAMES.items()}
    checked = set()
    for family in FAMILIES.values():
        if family.gguf_arch not in archs:
            continue
        known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[archs[family.gguf_arch]]}
        for spec in (*family.norms, *family.linears):  # bitnet.cpp's own names: the *_norm_in of embedding models
            assert "blk.{bid}." + spec.gguf in known or spec.gguf.endswith("_norm_in"), (family.key, spec.gguf)
        checked.add(family.gguf_arch)
    assert checked == {"bitnet", "llama", "qwen3", "gemma3"}
    assert set(GLOBAL_GGUF.values()) <= set(TENSOR_NAMES.values())


def test_option_choices_are_the_tables_choices():
    from bitconvert.formats.gguf.options import EMBED_TYPES, I2S_LAYOUTS, WEIGHT_TYPES
    from bitconvert.ternary.recipes import recipes_for

    assert set(WEIGHT_TYPES) | set(EMBED_TYPES) <= set(types.BY_OPTION)
    assert all(types.BY_OPTION[t].kind == "float" for t in EMBED_TYPES)
    assert I2S_LAYOUTS == i2s_layouts.LAYOUTS and I2S_LAYOUTS[0] == i2s_layouts.DEFAULT_LAYOUT
    from bitconvert.formats.gguf.options import GGUFOptions

    recipe = next(f for f in __import__("dataclasses").fields(GGUFOptions) if f.name == "recipe")
    assert recipe.metadata["choices"] == tuple(r.value for r in recipes_for("gguf"))


def test_a_renamed_family_goes_to_gguf_and_back_unchanged(models, tmp_path, monkeypatch):
    """Families are data: a renamed copy of the Llama record is written as Llama is (Q/K permuted,
    scale folded), read back as itself (the recorded config), and without that record as the first
    family its GGUF architecture, norms and activation fit."""
    import shutil
    from dataclasses import replace

    from bitconvert.model.families import FAMILIES

    copy = replace(FAMILIES["llama"], key="llama-renamed", hf_architecture="RenamedLlamaForCausalLM", model_types=())
    monkeypatch.setitem(FAMILIES, copy.key, copy)
    src = Path(shutil.copytree(models["llama-packed"], tmp_path / "renamed"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = [copy.hf_architecture]
    (src / "config.json").write_text(json.dumps(cfg))
    to_gguf(src, tmp_path / "r.gguf", embed_type="bf16")
    to_gguf(models["llama-packed"], tmp_path / "l.gguf", embed_type="bf16")
    fr, fl = GGUFFile(tmp_path / "r.gguf"), GGUFFile(tmp_path / "l.gguf")
    assert list(fr.tensors) == list(fl.tensors)
    assert all(np.array_equal(fr.read_bytes(n), fl.read_bytes(n)) for n in fr.tensors)
    same = {k for k in fr.metadata if k in fl.metadata and repr(fr.metadata[k]) == repr(fl.metadata[k])}
    differ = sorted(set(fr.metadata) - same)
    assert differ == ["bitconvert.hf_config", "bitconvert.provenance", "general.name"]
    assert open_checkpoint(tmp_path / "r.gguf").config.family.key == copy.key
    convert(tmp_path / "r.gguf", tmp_path / "back", "hf-packed")
    assert json.loads((tmp_path / "back/config.json").read_text())["architectures"] == [copy.hf_architecture]
    a, b = read_all(src), read_all(tmp_path / "back")
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    bare = rewrite_gguf(tmp_path / "r.gguf", tmp_path / "bare.gguf", {"bitconvert.hf_config": None})
    assert open_checkpoint(bare).config.family.key == "llama"  # registered first, and fits as well


@pytest.mark.parametrize("kind,gguf_type", [(k, "tq2_0") for k in KINDS] + [("bitnet-2b4t", "i2_s")])
def test_family_comes_from_the_header_without_the_recorded_config(models, tmp_path, kind, gguf_type):
    to_gguf(models[f"{kind}-packed"], tmp_path / "m.gguf", gguf_type)
    want = open_checkpoint(tmp_path / "m.gguf").config.family
    bare = rewrite_gguf(tmp_path / "m.gguf", tmp_path / "bare.gguf", {"bitconvert.hf_config": None})
    ck = open_checkpoint(bare)
    assert ck.config.family is want
    arch = GGUFFile(bare).get("general.architecture")
    quiet = rewrite_gguf(bare, tmp_path / "quiet.gguf", {f"{arch}.hidden_activation": None})
    # no activation written (llama.cpp's own converter writes none): the family computing what the
    # architecture's graph applies, SiLU under bitnet and llama, relu² under bitnet.cpp's bitnet-b1.58
    expect = {"bitnet": "1bitllm", "llama": "llama", "bitnet-b1.58": "bitnet-b1.58"}[arch]
    assert open_checkpoint(quiet).config.family.key == expect
    for name in ck.config.quantized_linear_names()[:3]:
        assert np.array_equal(ck.tensors[name].load().codes, open_checkpoint(tmp_path / "m.gguf").tensors[name].load().codes)


def test_older_architecture_name_reads_as_its_graph(models, tmp_path):
    # bitnet.cpp's first 2B-4T files say bitnet-25 where later ones say bitnet-b1.58
    to_gguf(models["bitnet-2b4t-packed"], tmp_path / "m.gguf", "i2_s")
    f = GGUFFile(tmp_path / "m.gguf")
    changes = {"general.architecture": _kv("str", "bitnet-25"), "bitconvert.hf_config": None}
    for key, kv in f.metadata.items():
        if key.startswith("bitnet-b1.58."):
            changes[key], changes["bitnet-25." + key.removeprefix("bitnet-b1.58.")] = None, kv
    old = open_checkpoint(rewrite_gguf(tmp_path / "m.gguf", tmp_path / "old.gguf", changes))
    assert old.config.family.key == "bitnet-b1.58" and old.facts.gguf.architecture == "bitnet-25"
    assert old.config.num_hidden_layers == 2 and old.config.hidden_act == "relu2"


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "f16"])
def test_entries_say_what_they_are_and_stored_bytes_agree_with_load(models, tmp_path, monkeypatch, gguf_type):
    from bitconvert.formats.gguf import parser
    from bitconvert.model.checkpoint import Kind, entry_as_ternary
    from bitconvert.ternary.stats import code_counts

    monkeypatch.setattr(parser, "MAP_MIN_BYTES", 1)  # every tensor mapped, as large ones are
    embed = "q8_0" if gguf_type == "tq1_0" else "f16"
    to_gguf(models["bitnet-2b4t-packed"], tmp_path / "m.gguf", gguf_type, embed_type=embed)
    ck = open_checkpoint(tmp_path / "m.gguf")
    f = GGUFFile(tmp_path / "m.gguf")
    for name, e in ck.tensors.items():
        s, value = e.stored(), e.load()
        assert s.data.dtype == np.uint8 and s.data.ndim == 1 and not s.data.flags.owndata, name
        assert isinstance(s.data.base, memoryview), name  # mapped, not copied
        assert s.data.size == f.tensors[name_of(ck, name)].nbytes, name
        if not ck.is_quantized_linear(name):
            assert e.kind is Kind.DENSE and isinstance(value, Dense), name
            if name == "model.embed_tokens.weight" and embed == "q8_0":
                assert s.layout == "gguf:Q8_0" and value.dtype_name == "F32"
            else:
                assert s.layout == "floats" and s.dtype_name == value.dtype_name and np.array_equal(s.data, value.raw())
            continue
        if gguf_type == "f16":  # dequantized: latent floats, their exact scale recorded beside them
            assert e.kind is Kind.LATENT and e.record is not None and isinstance(value, Dense), name
            assert s.layout == "floats" and s.dtype_name == "F16" and s.scale == e.record.scale
            tw, how = entry_as_ternary(e, value, e.record.scale.linear_class, e.record.scale.dtype_name)
            assert how == "kept" and tw.scale == e.record.scale
        else:
            assert e.kind is Kind.TERNARY and isinstance(value, TernaryWeight), name
            assert s.layout == f"gguf:{gguf_type.upper()}" and s.scale == value.scale, name
            tw = value
        assert s.counts() == code_counts(tw.codes), name


def name_of(ck, hf: str) -> str:
    from bitconvert.formats.gguf.names import to_gguf as gguf_name

    return gguf_name(hf, ck.config)


def test_facts_and_origin_come_from_the_header(models, tmp_path):
    from bitconvert.formats.gguf.stream_writer import kv_str

    src = models["bitnet-2b4t-packed"]
    to_gguf(src, tmp_path / "m.gguf", "i2_s", i2s_layout="arm")
    ck = open_checkpoint(tmp_path / "m.gguf")
    g = ck.facts.gguf
    assert (g.architecture, g.file_type, g.i2s_layout, g.i2s_layout_recorded) == ("bitnet-b1.58", 40, "arm", True)
    assert g.tokenizer["tokenizer.ggml.model"].value == "gpt2" and ck.facts.container_dtypes
    assert ck.facts.linear_class is ck.config.quantization.linear_class
    assert ck.origin.model_name == src.name and ck.origin.license is None
    recorded = ck.origin.recorded_provenance
    assert recorded["source"]["path"] == str(src) and recorded["output"] == {"format": "gguf", "files": ["m.gguf"]}
    changed = rewrite_gguf(
        tmp_path / "m.gguf", tmp_path / "named.gguf",
        {"general.source.url": kv_str("https://huggingface.co/org/model"), "general.license": kv_str("mit"),
         "bitconvert.i2s_layout": None},
    )  # fmt: skip
    ck = open_checkpoint(changed)
    assert (ck.origin.source_url, ck.origin.license) == ("https://huggingface.co/org/model", "mit")
    assert (ck.facts.gguf.i2s_layout, ck.facts.gguf.i2s_layout_recorded) == ("x86", False)
    to_gguf(changed, tmp_path / "again.gguf", "tq2_0")
    again = GGUFFile(tmp_path / "again.gguf")
    assert again.get("general.source.url") == "https://huggingface.co/org/model" and again.get("general.license") == "mit"
    assert open_checkpoint(tmp_path / "again.gguf").facts.gguf.i2s_layout is None


def test_converting_to_and_from_gguf_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = f"""
import sys
from pathlib import Path
from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
out = Path({str(tmp_path)!r})
for t, lay in (("tq2_0", None), ("tq1_0", None), ("i2_s", "x86"), ("i2_s", "x86-rows"), ("i2_s", "arm")):
    dst = out / f"{{t}}-{{lay}}.gguf"
    convert({str(FIXTURES / "bitnet-2b4t-256-master")!r}, dst, "gguf", {{"gguf_type": t, "i2s_layout": lay}})
    ck = open_checkpoint(dst)
    for e in ck.tensors.values():
        e.load()
        s = e.stored()
        if s.counts is not None:
            s.counts()
convert(out / "tq2_0-None.gguf", out / "packed", "hf-packed")
convert(out / "i2_s-arm.gguf", out / "again.gguf", "gguf", {{"gguf_type": "tq1_0"}})
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
