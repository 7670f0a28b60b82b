"""gguf-py (llama.cpp's own Python library) agrees with bitconvert's GGUF: codecs byte for byte, its
type table, its tensor names, its reader dequantizing our files to codes x scale (transformers'
recipe on a master), the metadata keys llama.cpp reads, and its quantizer's 256-value rows."""

from __future__ import annotations

import json
import math

import gguf
import numpy as np
import pytest
import torch
from conftest import FIXTURES, read_all
from gguf_tools import random_codes, to_gguf

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import codecs, types
from bitconvert.ternary import LinearClass, as_ternary
from bitconvert.verify import verify_target

Q = gguf.GGMLQuantizationType


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


def test_q8_0_is_byte_identical_to_gguf_py():
    x = torch.randn(16, 256) * 3
    x[0, :32] = 0
    x[1, 5] = 0.5 * (x[1, :32].abs().max() / 127)  # a value that lands on .5 after scaling
    assert np.array_equal(codecs.encode_q8_0(Dense.from_torch(x)), gguf.quants.quantize(x.numpy(), Q.Q8_0))


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


@pytest.mark.parametrize("gguf_type,qtype", [("tq2_0", Q.TQ2_0), ("tq1_0", Q.TQ1_0)])
def test_gguf_py_dequantizes_our_file_to_codes_times_scale(wide_checkpoint, tmp_path, gguf_type, qtype):
    src = wide_checkpoint["1bitllm-packed"]
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


@pytest.mark.parametrize("kind", ["bitnet-2b4t", "llama"])
def test_gguf_py_reads_transformers_recipe_from_a_master(wide_checkpoint, tmp_path, kind):
    convert(wide_checkpoint[f"{kind}-master"], tmp_path / "m.gguf", "gguf", {"gguf_type": "tq2_0"})
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    master = read_all(wide_checkpoint[f"{kind}-master"])
    for hf, gname, heads in (
        ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4),
        ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 2),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight", None),
    ):
        w = master[hf].float()
        mean = w.abs().mean().clamp(min=1e-5)
        codes = (w * (1.0 / mean)).round().clamp(-1, 1)  # transformers' WeightQuant, in fp32
        deq = gguf.quants.dequantize(tensors[gname].data, Q.TQ2_0)
        if kind == "llama":  # q/k rows interleaved per head, the scale folded into fp16 d
            if heads:
                hd = codes.shape[0] // heads
                codes = codes.reshape(heads, 2, hd // 2, -1).transpose(1, 2).reshape(codes.shape)
            expect = codes.numpy() * np.float32(np.float16(mean.item()))
        else:  # d = 1, the exact scale in an F32 .scale tensor
            scale = tensors[gname.removesuffix(".weight") + ".scale"].data
            assert scale.tolist() == [mean.item()]
            expect = codes.numpy()
        assert np.array_equal(deq, expect), hf


def test_the_metadata_llama_cpp_reads_is_the_configs(wide_checkpoint, tmp_path):
    src = wide_checkpoint["bitnet-2b4t-packed"]
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


def test_gguf_pys_quantizer_needs_rows_of_256_as_the_rule_says():
    with pytest.raises(gguf.quants.QuantError):  # llama.cpp's own quantizer (gguf-py) refuses 64-wide rows
        gguf.quants.quantize(np.zeros((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.TQ2_0)
    checks = verify_target(FIXTURES / "llama-packed", "llama.cpp").checks
    c = next(c for c in checks if c.name == "llama.cpp.tensor_types")
    assert not c.passed and c.figure == 14 and "rows of 64 values" in c.detail
