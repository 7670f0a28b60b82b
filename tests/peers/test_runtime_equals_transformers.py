"""The reference runtime computes what transformers computes on models transformers wrote: fp32 logits
within 1e-4 and equal greedy continuations for online, offline (AutoBitLinear, BitLinear) and
unpacked checkpoints, bf16 within bf16 rounding, the 1bitLLM layout as BitNet with SiLU, and the
same chat template and token ids.

Reference models are built by transformers (random init made non-trivial, ``save_pretrained``);
packed variants come from ``bitconvert pack``. transformers' offline AutoBitLinear runs only in the
dtype of the checkpoint's dense tensors, so the strict fp32 comparison uses a pack with ``--dtype
f32 --scale-dtype f32`` and the bf16 pack is compared in bf16 with a tolerance of bf16 rounding.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, cli, read_all
from safetensors.torch import save_file

from bitconvert.formats import open_checkpoint
from bitconvert.runtime import TextTokenizer, generate, load_model

pytest.importorskip("transformers", reason="transformers (test extra) is the peer")
pytest.importorskip("accelerate", reason="transformers needs accelerate (test extra) to load these models")


PROMPT = [5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200, 31, 8, 77, 150]


NEW_TOKENS = 32


DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, rms_norm_eps=1e-5,
            rope_theta=500000.0, bos_token_id=1, eos_token_id=2)


#: printed at the end of the transformers comparisons (run with -s to see them)
FIGURES: dict[str, dict] = {}


def _transformers_master(out: Path, arch: str, hidden_act: str = "relu2") -> Path:
    from transformers import AutoModelForCausalLM, BitNetConfig, LlamaConfig

    torch.manual_seed(0 if arch == "bitnet" else 1)
    if arch == "bitnet":
        cfg = BitNetConfig(**DIMS, tie_word_embeddings=True, hidden_act=hidden_act)
    else:
        cfg = LlamaConfig(**DIMS, tie_word_embeddings=False, hidden_act="silu")
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # transformers' init gives near-zero logits; make every part matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p))
            elif "lm_head" in name:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(0.02 * torch.randn_like(p))
    model.to(torch.bfloat16).save_pretrained(out)
    return out


def _with_quantization(src: Path, out: Path, mode: str, linear_class: str = "autobitlinear") -> Path:
    shutil.copytree(src, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": mode}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tf")
    bitnet = _transformers_master(tmp / "bitnet-master", "bitnet")
    llama = _transformers_master(tmp / "llama-master", "llama")
    models = {"bitnet-online": _with_quantization(bitnet, tmp / "bitnet-online", "online")}
    for name, src, args in (
        ("bitnet-offline-f32", bitnet, ["--linear-class", "autobitlinear", "--dtype", "f32", "--scale-dtype", "f32"]),
        ("bitnet-offline-bf16", bitnet, ["--linear-class", "autobitlinear"]),
        ("llama-packed-bitlinear", llama, ["--linear-class", "bitlinear"]),
    ):
        r = cli("pack", src, tmp / name, *args)
        assert r.returncode == 0, r.stderr
        models[name] = tmp / name
    # unpack output: floats codes x scale under an online config, run by transformers as it is
    assert cli("unpack", models["bitnet-offline-bf16"], tmp / "bitnet-unpacked").returncode == 0
    models["bitnet-unpacked"] = tmp / "bitnet-unpacked"
    return models


def _transformers_run(path: Path, dtype: torch.dtype) -> tuple[torch.Tensor, list[int], str]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    linear = type(model.model.layers[0].self_attn.q_proj).__name__
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)
    return logits, out[0, len(PROMPT):].tolist(), linear


def _record(name: str, **figures) -> None:
    FIGURES[name] = figures
    print(f"\n[runtime vs transformers] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected_linear",
    [
        ("bitnet-online", "AutoBitLinear"),
        ("bitnet-offline-f32", "AutoBitLinear"),
        ("llama-packed-bitlinear", "BitLinear"),
        ("bitnet-unpacked", "AutoBitLinear"),
    ],
)
def test_fp32_logits_and_greedy_equal_transformers(tf_models, name, expected_linear):
    path = tf_models[name]
    ref_logits, ref_tokens, linear = _transformers_run(path, torch.float32)
    assert linear == expected_linear  # the transformers path we meant to compare with
    model = load_model(path)
    ours = model.logits(PROMPT)
    diff = float((ours - ref_logits).abs().max())
    tokens = generate(model, PROMPT, max_new_tokens=NEW_TOKENS)
    _record(name, dtype="fp32", transformers_layer=linear, max_abs_diff=f"{diff:.3g}",
            logit_scale=f"{float(ref_logits.abs().max()):.3g}", greedy_equal=tokens == ref_tokens)
    assert diff <= 1e-4
    assert float(ref_logits.abs().max()) > 1.0  # a comparison of near-zero logits would prove little
    assert tokens == ref_tokens


@pytest.mark.slow
def test_bf16_offline_agrees_within_bf16_rounding(tf_models):
    """The bf16 pack as shipped (bf16 dense tensors, bf16 scales): transformers runs it in bf16 only.

    transformers rounds the dequantized activations to bf16 before a bf16 matmul; the runtime keeps
    the exact integer product, so the two differ by bf16 rounding, not more.
    """
    path = tf_models["bitnet-offline-bf16"]
    ref_logits, ref_tokens, linear = _transformers_run(path, torch.bfloat16)
    scale = float(ref_logits.abs().max())
    ours_bf16 = load_model(path, dtype=torch.bfloat16).logits(PROMPT)
    ours_f32 = load_model(path).logits(PROMPT)
    d16 = float((ours_bf16 - ref_logits).abs().max())
    d32 = float((ours_f32 - ref_logits).abs().max())
    tokens = generate(load_model(path, dtype=torch.bfloat16), PROMPT, max_new_tokens=NEW_TOKENS)
    agree = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), NEW_TOKENS)
    top1 = float((ours_bf16.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    _record("bitnet-offline-bf16", dtype="bf16", transformers_layer=linear, max_abs_diff_bf16=f"{d16:.3g}",
            max_abs_diff_ours_fp32=f"{d32:.3g}", logit_scale=f"{scale:.3g}", top1_agreement=top1,
            greedy_tokens_equal_before_first_difference=agree)
    bf16_step = 2.0 ** (math.floor(math.log2(scale)) - 7)  # one bf16 ulp at the largest logit
    assert d16 <= 2 * bf16_step and d32 <= 2 * bf16_step
    assert top1 == 1.0


@pytest.mark.slow
def test_1bitllm_architecture_equals_transformers_bitnet_with_silu(tmp_path):
    """1bitLLM (remote code) = BitNet with SiLU and its own sub-norm names; cross-check through
    transformers' BitNetForCausalLM configured with hidden_act silu, online quantization."""
    master = _transformers_master(tmp_path / "silu", "bitnet", hidden_act="silu")
    online = _with_quantization(master, tmp_path / "silu-online", "online")
    ref_logits, ref_tokens, _ = _transformers_run(online, torch.float32)
    renamed = tmp_path / "1bitllm"
    renamed.mkdir()
    tensors = {
        k.replace("attn_sub_norm", "inner_attn_ln").replace("ffn_sub_norm", "ffn_layernorm"): v
        for k, v in read_all(master).items()
    }
    save_file(tensors, str(renamed / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((master / "config.json").read_text())
    cfg.update(architectures=["BitnetForCausalLM"], model_type="llama")
    (renamed / "config.json").write_text(json.dumps(cfg))
    model = load_model(renamed)
    assert model.config.family.key == "1bitllm"
    ours = model.logits(PROMPT)
    diff = float((ours - ref_logits).abs().max())
    tokens = generate(model, PROMPT, max_new_tokens=NEW_TOKENS)
    _record("1bitllm (via BitNet+silu)", dtype="fp32", max_abs_diff=f"{diff:.3g}", greedy_equal=tokens == ref_tokens)
    assert diff <= 1e-4 and tokens == ref_tokens


def test_chat_template_and_tokenizer_match_transformers():
    import transformers
    src = FIXTURES / "bitnet-2b4t-packed"
    theirs = transformers.AutoTokenizer.from_pretrained(src)
    ours = TextTokenizer.from_checkpoint(open_checkpoint(src))
    prompt = "Hello world! How are you today? 3.14159"
    messages = [{"role": "user", "content": prompt}]
    assert ours.render_chat(prompt) == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if not isinstance(expected, list) else expected
    assert ours.encode_prompt(prompt) == expected
    assert ours.encode_prompt(prompt, chat=False) == theirs(prompt)["input_ids"]
    assert ours.decode(ours.encode_prompt(prompt, chat=False)) == prompt
