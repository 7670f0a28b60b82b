"""The reference runtime on its own: one set of logits for a model in any format (master, exact pack,
Nanotron, GGUF, I2_S), the KV cache equal to full forwards, weights kept as int8 codes, bf16
compute close to fp32, seeded sampling and stop tokens; families are data (a renamed family runs,
one naming no runtime block is refused)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import FIXTURES

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.runtime import Generation, compute_logits, generate, load_model
from bitconvert.ternary import LinearClass

PROMPT = [5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200, 31, 8, 77, 150]
TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]


def test_any_format_runs_the_same_model(wide_checkpoint, tmp_path):
    """A master, its exact pack (fp32 bitlinear scales), Nanotron and GGUF copies: one set of logits."""
    src = wide_checkpoint["bitnet-2b4t-master"]
    exact = tmp_path / "exact"
    convert(src, exact, "hf-packed", {"linear_class": LinearClass.BITLINEAR, "scale_dtype": "F32"})
    nanotron = tmp_path / "nanotron"
    convert(src, nanotron, "nanotron", {"allow_lossy": True})  # sub-norms kept beside the Nanotron model
    packed = tmp_path / "packed"
    convert(src, packed, "hf-packed")
    gguf = tmp_path / "model.gguf"
    convert(packed, gguf, "gguf")
    base = compute_logits(src, PROMPT)
    assert float((compute_logits(exact, PROMPT) - base).abs().max()) == 0.0
    assert float((compute_logits(nanotron, PROMPT) - base).abs().max()) == 0.0
    assert float((compute_logits(gguf, PROMPT) - compute_logits(packed, PROMPT)).abs().max()) == 0.0


def test_nanotron_copies_and_their_sources_give_equal_logits(tmp_path, nanotron_masters):
    tokens = [315, 5, 17, 42, 99, 7, 250]
    options = {"flavor": "pr178", "allow_lossy": True, "dtype": "BF16", "tp": 2}
    for kind in ("bitnet-2b4t", "llama"):
        nt = tmp_path / kind
        convert(nanotron_masters[kind], nt, "nanotron", options)
        want = compute_logits(nanotron_masters[kind], tokens)
        got = compute_logits(nt, tokens)
        assert torch.equal(got, want), kind
    convert(FIXTURES / "llama-packed", tmp_path / "approx", "nanotron", {**options, "allow_approximate": True})
    assert torch.equal(compute_logits(tmp_path / "approx", tokens), compute_logits(FIXTURES / "llama-packed", tokens))


@pytest.mark.parametrize("kind", ["1bitllm", "bitnet-2b4t", "llama"])
def test_our_i2_s_files_and_their_sources_give_equal_logits(wide_checkpoint, tmp_path, kind):
    src = wide_checkpoint[f"{kind}-packed"]
    path = tmp_path / "m.gguf"
    convert(src, path, "gguf", {"gguf_type": "i2_s", "embed_type": "bf16"})
    assert torch.equal(compute_logits(path, TOKENS), compute_logits(src, TOKENS))


@pytest.mark.parametrize("fixture", ["bitnet-2b4t-packed", "1bitllm-master", "llama-packed"])
def test_the_kv_cache_matches_full_forwards(fixture):
    model = load_model(FIXTURES / fixture)
    full = model.logits(PROMPT)
    cache = model.new_cache(capacity=2)  # small on purpose: growing must keep what is cached
    rows = [model.forward(PROMPT[:5], cache)]
    rows += [model.forward([t], cache) for t in PROMPT[5:9]]
    rows.append(model.forward(PROMPT[9:], cache))  # several new tokens after cached ones
    stepped = torch.cat(rows)
    assert cache.length == len(PROMPT)
    assert float((stepped - full).abs().max()) <= 1e-4  # fp32 reassociation only (logits ~20)
    # greedy with the cache equals greedy recomputing everything each step
    with_cache = generate(model, PROMPT[:6], max_new_tokens=12)
    seq = PROMPT[:6]
    for _ in range(12):
        seq = seq + [int(model.logits(seq)[-1].argmax())]
    assert with_cache == seq[6:]


def test_weights_stay_int8_ternary_codes():
    model = load_model(FIXTURES / "bitnet-2b4t-master")
    ckpt = open_checkpoint(FIXTURES / "bitnet-2b4t-master")
    n_ternary = sum(math.prod(e.shape) for n, e in ckpt.tensors.items() if ckpt.is_quantized_linear(n))
    for layer in model.layers:
        for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down):
            assert lin.codes.dtype == torch.int8 and lin.codes.shape == (lin.out_features, lin.in_features)
            assert set(lin.codes.unique().tolist()) <= {-1, 0, 1}
    dense = sum(math.prod(e.shape) for n, e in ckpt.tensors.items() if not ckpt.is_quantized_linear(n))
    assert model.weight_bytes() == n_ternary + 14 * 4 + dense * 4  # int8 codes, fp32 scale, fp32 dense


def test_bf16_compute_is_close_to_fp32():
    f32 = load_model(FIXTURES / "bitnet-2b4t-packed").logits(PROMPT)
    b16 = load_model(FIXTURES / "bitnet-2b4t-packed", dtype=torch.bfloat16).logits(PROMPT)
    assert b16.dtype == torch.float32
    assert float((b16 - f32).abs().max()) <= 0.05 * float(f32.abs().max())


def test_sampling_is_seeded():
    model = load_model(FIXTURES / "llama-packed")
    a = generate(model, PROMPT[:4], max_new_tokens=10, temperature=1.0, seed=7)
    assert a == generate(model, PROMPT[:4], max_new_tokens=10, temperature=1.0, seed=7)
    assert a != generate(model, PROMPT[:4], max_new_tokens=10, temperature=1.0, seed=8)


def test_generation_stops_at_a_stop_token():
    model = load_model(FIXTURES / "llama-packed")
    free = generate(model, PROMPT[:4], max_new_tokens=8)
    gen = Generation(model, PROMPT[:4], max_new_tokens=8, stop_tokens={free[2]})
    first = free.index(free[2])
    assert list(gen) == free[: first + 1] and gen.stopped_by == "stop token"


def test_a_renamed_family_runs_with_no_other_change(tmp_path):
    """Families are data: a copy of the Llama record under another key and class name runs as Llama."""
    import dataclasses

    from bitconvert.model.families import FAMILIES, register_family

    src = FIXTURES / "llama-master"
    copy = tmp_path / "llama-copy"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["architectures"] = ["CopyLlamaForCausalLM"]
    (copy / "config.json").write_text(json.dumps(cfg))
    family = dataclasses.replace(FAMILIES["llama"], key="llama-copy", hf_architecture="CopyLlamaForCausalLM")
    register_family(family)
    try:
        model = load_model(copy)
        assert model.config.family is family
        assert torch.equal(model.logits(PROMPT), load_model(src).logits(PROMPT))
    finally:
        del FAMILIES["llama-copy"]


def test_a_family_without_a_runtime_block_is_refused(tmp_path):
    import dataclasses

    from bitconvert.errors import CheckpointError
    from bitconvert.model.families import FAMILIES, register_family

    copy = tmp_path / "other"
    shutil.copytree(FIXTURES / "llama-packed", copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["architectures"] = ["OtherForCausalLM"]
    (copy / "config.json").write_text(json.dumps(cfg))
    register_family(dataclasses.replace(FAMILIES["llama"], key="other", hf_architecture="OtherForCausalLM",
                                        runtime_block="no-such-block"))
    try:
        with pytest.raises(CheckpointError, match="no-such-block"):
            load_model(copy)
    finally:
        del FAMILIES["other"]
