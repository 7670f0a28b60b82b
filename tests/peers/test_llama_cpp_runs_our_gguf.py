"""llama.cpp itself (llama-cpp-python) runs the GGUF files bitconvert writes: its logits agree with the
reference runtime's on every type it reads, in the bitnet and llama architectures (Q/K rows
permuted, scales folded or kept as ``.scale`` tensors, unquantized linears), and it tokenizes as
the source tokenizer does.

llama.cpp quantizes activations per 256-value block (Q8_K) where the runtime quantizes per token,
so their logits agree closely but not bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peer_tools import LLAMA_CPP_WHEEL
from peer_tools import llama_cpp_logits as peer_logits

from bitconvert.convert import convert
from bitconvert.runtime import compute_logits

TOKENS = [315, 39, 276, 75, 78, 270, 257, 75, 67, 0, 220, 51, 261, 220, 80, 84]  # BOS + "Hello world! The q"
assert len(TOKENS) == 16


def sharpen_attention(model: Path, factor: float = 16.0) -> Path:
    """Scale Q and K up so attention is far from uniform: with the tiny random test weights the
    softmax is nearly flat, and a RoPE or Q/K row-order mistake would go unnoticed."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((model / "config.json").read_text())
    tensors = load_file(str(model / "model.safetensors"))
    bitlinear = (cfg.get("quantization_config") or {}).get("linear_class", "bitlinear") == "bitlinear"
    for name in list(tensors):
        if name.endswith(("q_proj.weight_scale", "k_proj.weight_scale")):
            tensors[name] = tensors[name] / factor if bitlinear else tensors[name] * factor
        elif name.endswith(("q_proj.weight", "k_proj.weight")) and tensors[name].is_floating_point():
            tensors[name] = tensors[name] * factor
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """The wide packed checkpoints, attention sharpened (on copies)."""
    root = tmp_path_factory.mktemp("gguf-llamacpp")
    return {
        kind: sharpen_attention(Path(shutil.copytree(tiny_checkpoint(kind, "packed", wide=True), root / kind)))
        for kind in ("1bitllm", "bitnet-2b4t", "llama")
    }


def write_gguf(src: Path, dst: Path, gguf_type: str, **extra) -> Path:
    convert(src, dst, "gguf", {"gguf_type": gguf_type, **extra})
    return dst


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[list[float], int]:
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return [round(float(c), 6) for c in cos], int((a.argmax(-1) == b.argmax(-1)).sum())


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0"])
def test_llama_cpp_computes_what_the_runtime_computes_on_a_1bitllm_model(models, tmp_path, gguf_type):
    src = models["1bitllm"]
    path = write_gguf(src, tmp_path / f"m-{gguf_type}.gguf", gguf_type)
    ref = compute_logits(src, TOKENS)
    got = peer_logits(path, TOKENS)
    cos, argmax = agreement(ref, got)
    print(f"\n1bitLLM {gguf_type}: per-position cosine {cos}; argmax agreement {argmax}/16")
    assert min(cos) > 0.9995 and argmax >= 15


@pytest.mark.parametrize("gguf_type,embed_type", [("f16", "f16"), ("bf16", "bf16"), ("tq2_0", "q8_0")])
def test_llama_cpp_runs_the_float_and_q8_0_types_we_write(models, tmp_path, gguf_type, embed_type):
    src = models["1bitllm"]
    path = write_gguf(src, tmp_path / "m.gguf", gguf_type, embed_type=embed_type)
    cos, argmax = agreement(compute_logits(src, TOKENS), peer_logits(path, TOKENS))
    assert min(cos) > 0.999 and argmax >= 15


def test_llama_cpp_applies_the_scale_tensors_we_write(models, tmp_path):
    # Same codes, every .scale doubled: llama.cpp's logits must move (the scale is not ignored).
    src = models["1bitllm"]
    a = write_gguf(src, tmp_path / "a.gguf", "tq2_0")
    from bitconvert.formats.gguf.parser import GGUFFile

    f = GGUFFile(a)
    data = bytearray(a.read_bytes())
    for t in f.tensors.values():
        if t.name.endswith(".scale"):
            v = np.frombuffer(bytes(data[t.offset : t.offset + 4]), dtype=np.float32) * 2
            data[t.offset : t.offset + 4] = v.tobytes()
    b = tmp_path / "b.gguf"
    b.write_bytes(bytes(data))
    la, lb = peer_logits(a, TOKENS), peer_logits(b, TOKENS)
    cos, _ = agreement(la, lb)
    assert min(cos) < 0.99


def embedding_only_logits(src: Path) -> torch.Tensor:
    """Logits with every layer skipped (embedding -> final norm -> head), to isolate what layers add."""
    from bitconvert.model.checkpoint import as_dense
    from bitconvert.formats import open_checkpoint

    ck = open_checkpoint(src)
    emb = as_dense(ck.tensors["model.embed_tokens.weight"].load(), "F32").torch()[torch.tensor(TOKENS)]
    norm = as_dense(ck.tensors["model.norm.weight"].load(), "F32").torch()
    head = as_dense(ck.tensors["lm_head.weight"].load(), "F32").torch()
    x = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + ck.config.rms_norm_eps) * norm
    return x @ head.T


def test_llama_cpp_computes_what_the_runtime_computes_in_the_llama_architecture(models, tmp_path):
    # llama arch: Q/K rows permuted for llama.cpp's RoPE, scale folded into d. The residual layers
    # contribute little to these logits, so also compare what the layers add to embedding -> head.
    src = models["llama"]
    path = write_gguf(src, tmp_path / "m.gguf", "tq2_0")
    base = embedding_only_logits(src)
    ref = compute_logits(src, TOKENS)
    got = peer_logits(path, TOKENS)
    cos, argmax = agreement(ref, got)
    delta_cos, _ = agreement(ref - base, got - base)
    print(f"\nllama arch tq2_0: cosine {cos}; layer contribution cosine {delta_cos}; argmax {argmax}/16")
    assert min(cos) > 0.9995 and min(delta_cos) > 0.995 and argmax >= 15


def test_llama_cpp_runs_relu2_models_with_silu(models, tmp_path):
    # Documented upstream limitation: the bitnet graph applies SiLU. llama.cpp's logits for a 2B-4T
    # (relu²) file match the runtime on the same model relabelled SiLU, not the real model.
    src = models["bitnet-2b4t"]
    path = write_gguf(src, tmp_path / "m.gguf", "tq2_0")
    silu = tmp_path / "as-silu"
    shutil.copytree(src, silu)
    cfg = json.loads((silu / "config.json").read_text())
    cfg["hidden_act"] = "silu"
    (silu / "config.json").write_text(json.dumps(cfg))
    got = peer_logits(path, TOKENS)
    cos_silu, _ = agreement(compute_logits(silu, TOKENS), got)
    cos_relu2, _ = agreement(compute_logits(src, TOKENS), got)
    print(f"\n2B-4T tq2_0 in llama.cpp: min cosine vs SiLU runtime {min(cos_silu)}, vs relu² {min(cos_relu2)}")
    assert min(cos_silu) > 0.9995 and min(cos_relu2) < min(cos_silu)


def test_llama_cpp_tokenizes_like_the_source_tokenizer(models, tmp_path):
    from tokenizers import Tokenizer

    llama_cpp = pytest.importorskip("llama_cpp", reason=f"llama-cpp-python is not installed ({LLAMA_CPP_WHEEL})")
    src = models["1bitllm"]
    path = write_gguf(src, tmp_path / "m.gguf", "tq2_0")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, vocab_only=True)
    try:
        for text in ["Hello world! How are you today?", "The quick brown fox jumps over the lazy dog.",
                     "llama.cpp reads GGUF files; 2025 3.14159 -1 +1", "  spaced\n\nlines\tand tabs"]:  # fmt: skip
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text).ids, text
        assert llm.token_bos() == 315 and llm.token_eos() == 316
    finally:
        llm.close()


def test_llama_cpp_runs_unquantized_linears_in_the_llama_architecture(tiny_checkpoint, tmp_path):
    # modules_to_not_convert in the llama architecture: F16 q_proj, permuted like the ternary ones
    src = sharpen_attention(Path(shutil.copytree(tiny_checkpoint("llama", "master", wide=True), tmp_path / "src")))
    cfg = json.loads((src / "config.json").read_text())
    keep = ["model.layers.0.self_attn.q_proj"]
    cfg["quantization_config"] = {"quant_method": "bitnet", "modules_to_not_convert": keep}
    (src / "config.json").write_text(json.dumps(cfg))
    path = write_gguf(src, tmp_path / "m.gguf", "tq2_0")
    base = embedding_only_logits(src)
    ref, got = compute_logits(src, TOKENS), peer_logits(path, TOKENS)
    cos, argmax = agreement(ref, got)
    delta_cos, _ = agreement(ref - base, got - base)
    assert min(cos) > 0.9995 and min(delta_cos) > 0.995 and argmax >= 15
