"""Reading GGUF: files llama.cpp's converter makes (folded fp16 scales, per-block d) read as codes and
one scale, or as floats with a note when blocks differ; the family comes from the header when no
config is recorded (bitnet.cpp's older architecture name included); every entry says what it is
and its stored bytes agree with what it loads; facts and origin come from the header."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import FIXTURES
from gguf_tools import kv, rewrite_gguf, to_gguf

from bitconvert.convert import convert
from bitconvert.describe import describe_checkpoint
from bitconvert.dtypes import Dense
from bitconvert.formats import open_checkpoint
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.model.checkpoint import as_dense
from bitconvert.ternary import LinearClass, TernaryWeight, as_ternary

Q = gguf.GGMLQuantizationType
KINDS = ("1bitllm", "bitnet-2b4t", "llama")


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


def test_llama_cpps_folded_scales_read_as_codes_and_one_scale(wide_checkpoint, tmp_path):
    path = tmp_path / "llamacpp.gguf"
    truth = _write_like_llama_cpp(path, wide_checkpoint["1bitllm-packed"])
    ck = open_checkpoint(path)
    assert ck.config.family.key == "1bitllm"
    for hf, want in truth.items():
        tw = ck.tensors[hf].load()
        assert isinstance(tw, TernaryWeight), hf
        assert np.array_equal(tw.codes, want.codes), hf
        assert tw.scale.dtype_name == "F16" and tw.scale.item() == want.scale.magnitude("F16")


def test_unequal_block_scales_read_as_floats_and_say_why(wide_checkpoint, tmp_path):
    path = tmp_path / "llamacpp.gguf"
    _write_like_llama_cpp(path, wide_checkpoint["1bitllm-packed"], perturb=True)
    ck = open_checkpoint(path)
    w = ck.tensors["model.layers.0.self_attn.q_proj.weight"].load()
    assert isinstance(w, Dense) and w.dtype_name == "F32"
    assert any("model.layers.0.self_attn.q_proj.weight" in n and "different scales" in n for n in ck.notes)


@pytest.mark.parametrize("kind,gguf_type", [(k, "tq2_0") for k in KINDS] + [("bitnet-2b4t", "i2_s")])
def test_family_comes_from_the_header_without_the_recorded_config(wide_checkpoint, tmp_path, kind, gguf_type):
    to_gguf(wide_checkpoint[f"{kind}-packed"], tmp_path / "m.gguf", gguf_type)
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
        recorded = open_checkpoint(tmp_path / "m.gguf").tensors[name].load()
        assert np.array_equal(ck.tensors[name].load().codes, recorded.codes)


def test_older_architecture_name_reads_as_its_graph(wide_checkpoint, tmp_path):
    # bitnet.cpp's first 2B-4T files say bitnet-25 where later ones say bitnet-b1.58
    to_gguf(wide_checkpoint["bitnet-2b4t-packed"], tmp_path / "m.gguf", "i2_s")
    f = GGUFFile(tmp_path / "m.gguf")
    changes = {"general.architecture": kv("str", "bitnet-25"), "bitconvert.hf_config": None}
    for key, value in f.metadata.items():
        if key.startswith("bitnet-b1.58."):
            changes[key], changes["bitnet-25." + key.removeprefix("bitnet-b1.58.")] = None, value
    old = open_checkpoint(rewrite_gguf(tmp_path / "m.gguf", tmp_path / "old.gguf", changes))
    assert old.config.family.key == "bitnet-b1.58" and old.facts.gguf.architecture == "bitnet-25"
    assert old.config.num_hidden_layers == 2 and old.config.hidden_act == "relu2"


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s", "f16"])
def test_entries_say_what_they_are_and_stored_bytes_agree_with_load(wide_checkpoint, tmp_path, monkeypatch, gguf_type):
    from bitconvert.formats.gguf import parser
    from bitconvert.model.checkpoint import Kind, entry_as_ternary
    from bitconvert.ternary.stats import code_counts

    monkeypatch.setattr(parser, "MAP_MIN_BYTES", 1)  # every tensor mapped, as large ones are
    embed = "q8_0" if gguf_type == "tq1_0" else "f16"
    to_gguf(wide_checkpoint["bitnet-2b4t-packed"], tmp_path / "m.gguf", gguf_type, embed_type=embed)
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


def test_facts_and_origin_come_from_the_header(wide_checkpoint, tmp_path):
    from bitconvert.formats.gguf.stream_writer import kv_str

    src = wide_checkpoint["bitnet-2b4t-packed"]
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
    assert again.get("general.source.url") == "https://huggingface.co/org/model"
    assert again.get("general.license") == "mit"
    assert open_checkpoint(tmp_path / "again.gguf").facts.gguf.i2s_layout is None


def test_inspect_reads_gguf(wide_checkpoint, tmp_path):
    from bitconvert.describe import describe_checkpoint

    to_gguf(wide_checkpoint["1bitllm-packed"], tmp_path / "m.gguf", "tq1_0")
    info = describe_checkpoint(tmp_path / "m.gguf")
    assert info["format"] == "gguf" and info["ternary_tensors"] == 14
    row = next(t for t in info["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    assert row["stored"].startswith("TQ1_0") and abs(sum(row["codes"].values()) - 1) < 1e-9


def test_inspect_names_the_family_and_the_files_own_architecture(tmp_path):
    """`inspect` keeps `architecture` the model family and says which GGUF architecture the file declares."""
    src = FIXTURES / "bitnet-2b4t-256-packed"
    for gtype, arch in (("tq2_0", "bitnet"), ("i2_s", "bitnet-b1.58")):
        out = tmp_path / f"{gtype}.gguf"
        convert(src, out, "gguf", {"gguf_type": gtype})
        d = describe_checkpoint(out)
        assert d["architecture"] == "bitnet-b1.58" and d["gguf_architecture"] == arch
        assert ("i2s_layout" in d) == (gtype == "i2_s")
    assert "gguf_architecture" not in describe_checkpoint(src)
