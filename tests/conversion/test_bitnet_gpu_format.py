"""``bitnet-gpu``: every code and scale through the W2A8 layout and back, what it refuses, what torch reads.

The peer comparison (microsoft/BitNet's own converter) is tests/peers/test_bitnet_gpu_peer.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError, UsageError
from bitconvert.formats import open_checkpoint
from bitconvert.formats.bitnet_gpu.layout import FP16_FILE, INT2_FILE, decode_int2, encode_int2, to_interleaved
from conftest import FIXTURES, make_checkpoint, run_cli


def _ternary(ckpt):
    return {n: ckpt.tensors[n].load() for n in ckpt.tensors if ckpt.is_quantized_linear(n)}


def _same_weights(a, b) -> None:
    """Every quantized weight's codes and scale (dtype, convention, bits), every dense tensor's words."""
    assert set(a.tensors) == set(b.tensors)
    for name in a.tensors:
        x, y = a.tensors[name].load(), b.tensors[name].load()
        if a.is_quantized_linear(name):
            assert np.array_equal(x.codes, y.codes), name
            assert x.scale == y.scale, (name, x.scale, y.scale)
        else:
            assert x.dtype_name == y.dtype_name and np.array_equal(x.data, y.data), name


@pytest.mark.parametrize("fixture", ["bitnet-2b4t-master", "bitnet-2b4t-256-master", "bitnet-2b4t-packed"])
def test_round_trip_keeps_every_code_and_scale(fixture, tmp_path):
    """SRC -> bitnet-gpu -> hf-packed holds what SRC -> hf-packed holds (the scale: bf16 mean|W|)."""
    convert(FIXTURES / fixture, tmp_path / "gpu", "bitnet-gpu")
    convert(tmp_path / "gpu", tmp_path / "back", "hf-packed")
    convert(FIXTURES / fixture, tmp_path / "direct", "hf-packed", {"linear_class": "autobitlinear"})
    _same_weights(open_checkpoint(tmp_path / "back"), open_checkpoint(tmp_path / "direct"))
    gpu = open_checkpoint(tmp_path / "gpu")
    assert gpu.format == "bitnet-gpu" and gpu.config.raw["quantization_config"]["linear_class"] == "autobitlinear"
    _same_weights(gpu, open_checkpoint(tmp_path / "direct"))


@pytest.mark.parametrize("gguf_type", ["tq2_0", "i2_s"])
def test_gguf_source_keeps_its_exact_scales(gguf_type, tmp_path):
    src = FIXTURES / "bitnet-2b4t-256-packed"  # rows of 256 values, as TQ2_0 blocks need
    convert(src, tmp_path / "m.gguf", "gguf", {"gguf_type": gguf_type})
    convert(tmp_path / "m.gguf", tmp_path / "gpu", "bitnet-gpu")
    _same_weights(open_checkpoint(tmp_path / "gpu"), open_checkpoint(src))


def test_written_twice_the_bytes_are_the_same(tmp_path):
    for out in ("a", "b"):
        convert(FIXTURES / "bitnet-2b4t-master", tmp_path / out, "bitnet-gpu")
    for name in (INT2_FILE, FP16_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_torch_reads_what_the_layout_says(tmp_path):
    """torch.load (weights only) of both files: packed codes, [s_q, s_k, s_v, 0], codes x scale."""
    torch = pytest.importorskip("torch")
    src = open_checkpoint(FIXTURES / "bitnet-2b4t-packed")
    convert(src.path, tmp_path / "gpu", "bitnet-gpu")
    int2 = torch.load(tmp_path / "gpu" / INT2_FILE, weights_only=True)
    fp16 = torch.load(tmp_path / "gpu" / FP16_FILE, weights_only=True)
    w = _ternary(src)
    p = "model.layers.1."
    q = to_interleaved(w[p + "self_attn.q_proj.weight"].codes, src.config.num_attention_heads)
    k = to_interleaved(w[p + "self_attn.k_proj.weight"].codes, src.config.num_key_value_heads)
    codes = np.concatenate([q, k, w[p + "self_attn.v_proj.weight"].codes])
    packed = int2["layers.1.attention.wqkv.weight"]
    assert packed.dtype == torch.int8 and np.array_equal(packed.numpy().view(np.uint8), encode_int2(codes))
    scales = int2["layers.1.attention.wqkv.weight_scale"]
    want = [w[p + f"self_attn.{x}_proj.weight"].scale.item() for x in "qkv"] + [0.0]
    assert scales.dtype == torch.bfloat16 and scales.float().tolist() == want
    dense = fp16["layers.1.attention.wqkv.weight"].float().numpy()
    row_scale = np.repeat(want[:3], [q.shape[0], k.shape[0], codes.shape[0] - q.shape[0] - k.shape[0]])
    assert np.array_equal(dense, codes * row_scale[:, None].astype(np.float32))
    assert torch.equal(int2["output.weight"], int2["tok_embeddings.weight"])  # tied: the embedding twice
    assert list(fp16) == [k for k in int2 if not k.endswith("weight_scale")]


def test_int2_packing_inverts():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 2, size=(48, 96)).astype(np.int8)
    packed = encode_int2(codes)
    assert packed.shape == (48, 24) and np.array_equal(decode_int2(packed), codes)
    assert not np.isin(packed & 3, [0]).any()  # field value 0 is never written


def test_a_scale_bf16_cannot_hold_is_refused_then_warned(tmp_path):
    """bitlinear scales (1/mean|W| in bf16) become mean|W|, which bf16 rounds: a loss per tensor."""
    src = make_checkpoint(tmp_path / "src", "bitnet-2b4t", "packed", linear_class="bitlinear")
    with pytest.raises(CheckpointError, match="stores each scale in bf16.*--allow-lossy"):
        convert(src, tmp_path / "refused", "bitnet-gpu")
    assert not (tmp_path / "refused").exists()
    result = convert(src, tmp_path / "gpu", "bitnet-gpu", {"allow_lossy": True})
    rounded = [w for w in result.report.warnings if w.startswith("scale rounded to bf16")]
    source, written = _ternary(open_checkpoint(src)), _ternary(open_checkpoint(tmp_path / "gpu"))
    changed = [n for n in source if source[n].scale.multiplier != written[n].scale.multiplier]
    assert changed and len(rounded) == len(changed)
    for name in source:
        assert np.array_equal(source[name].codes, written[name].codes)
        assert written[name].scale.item() == source[name].scale.to(written[name].scale.linear_class, "BF16").item()


def test_what_the_gpu_model_cannot_compute(tmp_path):
    with pytest.raises(UsageError, match="attn_sub_norm, ffn_sub_norm, which the llama family lacks"):
        convert(FIXTURES / "llama-master", tmp_path / "llama", "bitnet-gpu")
    with pytest.raises(CheckpointError, match="activation: gpu/model.py computes relu2.*this model silu"):
        convert(FIXTURES / "1bitllm-master", tmp_path / "1bitllm", "bitnet-gpu")
    result = convert(FIXTURES / "1bitllm-master", tmp_path / "1bitllm", "bitnet-gpu", {"allow_lossy": True})
    assert any("lost in the W2A8 GPU model: the activation" in w for w in result.report.warnings)
    odd = make_checkpoint(tmp_path / "odd", "bitnet-2b4t", "master", hidden=48, intermediate=96, heads=4, kv_heads=2)
    r = run_cli("convert", odd, tmp_path / "odd-gpu", "--to", "bitnet-gpu")
    assert r.returncode == 1 and "layers.0.attention.wqkv.weight is 96 x 48" in r.stderr, r.stderr
    assert not (tmp_path / "odd-gpu").exists()


def test_recipes_of_other_formats_are_refused():
    r = run_cli("convert", FIXTURES / "bitnet-2b4t-master", "x", "--to", "bitnet-gpu", "--recipe", "onebitllms")
    assert r.returncode == 2 and "--recipe must be one of transformers, bitnet-gpu" in r.stderr, r.stderr
    r = run_cli("convert", FIXTURES / "bitnet-2b4t-master", "x", "--to", "hf-packed", "--recipe", "bitnet-gpu")
    assert r.returncode == 2 and "--recipe must be one of transformers, onebitllms" in r.stderr, r.stderr
    r = run_cli("convert", FIXTURES / "bitnet-2b4t-packed", "x", "--to", "bitnet-gpu", "--recipe", "bitnet-gpu")
    assert r.returncode == 2 and "already holds ternary codes" in r.stderr, r.stderr
    from bitconvert.ternary.recipes import Recipe, check_recipe, recipes_for

    assert recipes_for("bitnet-gpu") == (Recipe.TRANSFORMERS, Recipe.BITNET_GPU)
    for fmt in ("hf-packed", "gguf", "nanotron"):
        with pytest.raises(UsageError, match=f"--recipe bitnet-gpu does not write {fmt}"):
            check_recipe(Recipe.BITNET_GPU, fmt, {"gguf_type": "i2_s"}, None, "src")


def test_an_output_differing_from_a_tied_embedding_is_named(tmp_path):
    """An untied model writes its lm_head as output.weight; read with a config that ties the
    embeddings it is refused on loading, read with its own it comes back as lm_head."""
    import json

    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    src = make_checkpoint(tmp_path / "src", "bitnet-2b4t", "master", seed=5)
    cfg = json.loads((src / "config.json").read_text())
    untied = {**cfg, "tie_word_embeddings": False}
    (src / "config.json").write_text(json.dumps(untied))
    tensors = load_file(src / "model.safetensors")
    tensors["lm_head.weight"] = torch.flip(tensors["model.embed_tokens.weight"], [0]).contiguous()
    save_file(tensors, src / "model.safetensors")
    convert(src, tmp_path / "gpu", "bitnet-gpu")
    back = open_checkpoint(tmp_path / "gpu")
    head = back.tensors["lm_head.weight"].load()
    assert np.array_equal(head.data, tensors["lm_head.weight"].view(torch.int16).numpy().view(np.uint16))
    (tmp_path / "gpu" / "config.json").write_text(json.dumps({**untied, "tie_word_embeddings": True}))
    tied = open_checkpoint(tmp_path / "gpu")
    assert "lm_head.weight" not in tied.tensors
    with pytest.raises(CheckpointError, match="differs from tok_embeddings.weight, but config.json ties"):
        tied.tensors["model.embed_tokens.weight"].load()
