"""GGUF written and read back: packed -> GGUF -> packed is byte-identical in every type, a master is
quantized as transformers quantizes it, the tokenizer survives GGUF -> tokenizer.json and GGUF ->
GGUF, unquantized linears stay dense (and in llama order), rows that fill no block fall back to F16
only when allowed, and a renamed copy of a family travels as the family does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, read_all
from gguf_tools import rewrite_gguf, to_gguf

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf import types
from bitconvert.formats.gguf.names import permute_qk
from bitconvert.formats.gguf.parser import GGUFFile

KINDS = ("1bitllm", "bitnet-2b4t", "llama")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "f16"])
def test_packed_gguf_packed_is_byte_identical(wide_checkpoint, tmp_path, kind, gguf_type):
    src = wide_checkpoint[f"{kind}-packed"]
    to_gguf(src, tmp_path / "m.gguf", gguf_type, embed_type="bf16")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a, b = read_all(src), read_all(tmp_path / "back")
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    cfg_a = json.loads((src / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg_b["quantization_config"]["linear_class"] == cfg_a["quantization_config"]["linear_class"]


def test_default_embedding_type_keeps_every_tensor_exactly(wide_checkpoint, tmp_path):
    """token_embd and an untied output keep the source's bf16 by default: the round trip is exact."""
    src = wide_checkpoint["llama-packed"]
    to_gguf(src, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a, b = read_all(src), read_all(tmp_path / "back")
    for name in a:
        if name.endswith(("_proj.weight", "weight_scale")) or name == "lm_head.weight":
            assert torch.equal(a[name], b[name]), name


def test_an_embedding_type_that_rounds_is_said(wide_checkpoint, tmp_path):
    """--embed-type f16 on a bf16 source rounds the values F16 cannot hold (here the subnormal ones of
    the untied output): the conversion counts them per tensor; bf16 holds every value."""
    r = convert(wide_checkpoint["llama-packed"], tmp_path / "f16.gguf", "gguf", {"embed_type": "f16"})
    said = [w for w in r.report.warnings if "values change when stored as F16" in w]
    assert said and all(w.startswith(("lm_head.weight (output.weight)", "model.embed_tokens.weight")) for w in said), (
        said
    )
    r = convert(wide_checkpoint["llama-packed"], tmp_path / "bf16.gguf", "gguf", {"embed_type": "bf16"})
    assert not any("values change" in w for w in r.report.warnings), r.report.warnings


def test_master_is_quantized_like_transformers(wide_checkpoint, tmp_path):
    src = wide_checkpoint["bitnet-2b4t-master"]
    to_gguf(src, tmp_path / "m.gguf")
    ck = open_checkpoint(tmp_path / "m.gguf")
    master = read_all(src)
    for name in ck.config.quantized_linear_names():
        tw = ck.tensors[name].load()
        # transformers' WeightQuant written out in torch (fp32 mean|W|, floored; round half to even)
        w = master[name].float()
        mean_abs = w.abs().mean().clamp(min=1e-5)
        codes = (w * (1.0 / mean_abs)).round().clamp(-1, 1).to(torch.int8).numpy()
        assert np.array_equal(tw.codes, codes), name
        assert tw.scale.dtype_name == "F32" and tw.scale.item() == mean_abs.item()


def test_the_gguf_tokenizer_is_rebuilt_as_tokenizer_json(wide_checkpoint, tmp_path):
    from tokenizers import Tokenizer

    src = wide_checkpoint["1bitllm-packed"]
    to_gguf(src, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", tmp_path / "back", "hf-packed")
    a = Tokenizer.from_file(str(src / "tokenizer.json"))
    b = Tokenizer.from_file(str(tmp_path / "back" / "tokenizer.json"))
    text = (FIXTURES / "tokenizer" / "tokenizer.json").read_text()[:3000] + " Hello world! 3.14159 <|eot_id|>"
    assert a.encode(text).ids == b.encode(text).ids
    tcfg = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert tcfg["bos_token"] == "<|begin_of_text|>" and "chat_template" in tcfg


def test_gguf_to_gguf_keeps_the_tokenizer_and_codes(wide_checkpoint, tmp_path):
    to_gguf(wide_checkpoint["1bitllm-packed"], tmp_path / "a.gguf", "i2_s")
    to_gguf(tmp_path / "a.gguf", tmp_path / "b.gguf", "tq1_0")
    fa, fb = GGUFFile(tmp_path / "a.gguf"), GGUFFile(tmp_path / "b.gguf")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        assert fa.get(key) == fb.get(key), key
    a, b = open_checkpoint(tmp_path / "a.gguf"), open_checkpoint(tmp_path / "b.gguf")
    for name in a.config.quantized_linear_names():
        ta, tb = a.tensors[name].load(), b.tensors[name].load()
        assert np.array_equal(ta.codes, tb.codes) and ta.scale.same_as(tb.scale)


def test_unquantized_linears_stay_dense_and_in_order(wide_checkpoint, tmp_path):
    # modules_to_not_convert: such a linear is written F16 and, in the llama architecture, its
    # Q/K rows are permuted like the ternary ones; reading undoes it.
    src = Path(shutil.copytree(wide_checkpoint["llama-master"], tmp_path / "src"))
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


def test_a_renamed_family_goes_to_gguf_and_back_unchanged(wide_checkpoint, tmp_path, monkeypatch):
    """Families are data: a renamed copy of the Llama record is written as Llama is (Q/K permuted,
    scale folded), read back as itself (the recorded config), and without that record as the first
    family its GGUF architecture, norms and activation fit."""
    import shutil
    from dataclasses import replace

    from bitconvert.model.families import FAMILIES

    copy = replace(FAMILIES["llama"], key="llama-renamed", hf_architecture="RenamedLlamaForCausalLM", model_types=())
    monkeypatch.setitem(FAMILIES, copy.key, copy)
    src = Path(shutil.copytree(wide_checkpoint["llama-packed"], tmp_path / "renamed"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = [copy.hf_architecture]
    (src / "config.json").write_text(json.dumps(cfg))
    to_gguf(src, tmp_path / "r.gguf", embed_type="bf16")
    to_gguf(wide_checkpoint["llama-packed"], tmp_path / "l.gguf", embed_type="bf16")
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
