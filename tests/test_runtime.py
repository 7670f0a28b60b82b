"""The reference runtime: equal to transformers on models transformers wrote, and self-consistent.

Reference models are built by transformers (random init made non-trivial, ``save_pretrained``);
packed variants come from ``bitconvert pack``. transformers runs them on the CPU with its own
bitnet integration (AutoBitLinear online/offline, BitLinear) and we compare logits and greedy
continuations. transformers' offline AutoBitLinear only runs in the dtype of the checkpoint's
dense tensors, so the strict fp32 comparison uses a pack with ``--dtype f32 --scale-dtype f32``
and the bf16 pack is compared in bf16 with a tolerance of bf16 rounding.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, make_checkpoint, read_all, run_cli
from safetensors.torch import save_file
from typer.testing import CliRunner

from bitconvert.cli import app
from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint
from bitconvert.runtime import Generation, TextTokenizer, compute_logits, generate, load_model
from bitconvert.ternary import LinearClass

PROMPT = [5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200, 31, 8, 77, 150]
NEW_TOKENS = 32
DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, rms_norm_eps=1e-5,
            rope_theta=500000.0, bos_token_id=1, eos_token_id=2)
#: printed at the end of the transformers comparisons (run with -s to see them)
FIGURES: dict[str, dict] = {}


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    r.returncode = r.exit_code
    return r


# --- models written by transformers -------------------------------------------------------------


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
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
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


# --- the runtime on its own ------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["bitnet-2b4t-packed", "1bitllm-master", "llama-packed"])
def test_kv_cache_matches_full_forward(fixture):
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


def test_any_format_runs_the_same_model(tmp_path):
    """A master, its exact pack (fp32 bitlinear scales), Nanotron and GGUF copies: one set of logits."""
    src = make_checkpoint(tmp_path / "src", "bitnet-2b4t", "master", hidden=256, intermediate=512, heads=4, kv_heads=2)
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


def test_nothing_below_the_runtime_imports_it():
    """torch stays on the runtime's side: ternary, model, formats and io never import runtime or kernels."""
    from test_import_cycles import import_graph

    lower = tuple(f"bitconvert.{p}" for p in ("errors", "secrets", "dtypes", "io", "ternary", "model", "formats"))
    torch_side = ("bitconvert.runtime", "bitconvert.kernels")
    leaks = {m: sorted(d for d in deps if d.startswith(torch_side))
             for m, deps in import_graph().items() if m.startswith(lower)}
    assert {m: d for m, d in leaks.items() if d} == {}


def test_weights_stay_ternary_codes():
    model = load_model(FIXTURES / "bitnet-2b4t-master")
    ckpt = open_checkpoint(FIXTURES / "bitnet-2b4t-master")
    n_ternary = sum(math.prod(e.shape) for n, e in ckpt.tensors.items() if ckpt.is_quantized_linear(n))
    for layer in model.layers:
        for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down):
            assert lin.codes.dtype == torch.int8 and lin.codes.shape == (lin.out_features, lin.in_features)
            assert set(lin.codes.unique().tolist()) <= {-1, 0, 1}
    dense = sum(math.prod(e.shape) for n, e in ckpt.tensors.items() if not ckpt.is_quantized_linear(n))
    assert model.weight_bytes() == n_ternary + 14 * 4 + dense * 4  # int8 codes, fp32 scale, fp32 dense


KERNEL_CHECK = """
import json, sys, torch
from bitconvert.runtime import generate, load_model
prompt = json.loads(sys.argv[1])
out = {}
for fixture in sys.argv[2:]:
    plain = load_model(fixture)
    kernel = load_model(fixture, use_kernels=True)
    assert kernel.layers[0].q.packed is not None and kernel.layers[0].q.codes is None
    out[fixture] = {
        "gemm": torch.equal(kernel.logits(prompt), plain.logits(prompt)),
        "gemv": torch.equal(kernel.logits(prompt[:5]), plain.logits(prompt[:5])),
        "generate": generate(kernel, prompt[:4], max_new_tokens=6) == generate(plain, prompt[:4], max_new_tokens=6),
    }
print(json.dumps(out))
"""


def test_triton_kernel_path_equals_torch_path():
    """The CUDA path calls bitconvert.kernels.ternary_linear; under TRITON_INTERPRET=1 (set before
    Triton is imported, hence a fresh process) the same kernels run on the CPU, so the integration
    is tested here: GEMM above 8 tokens, GEMV at or below, and generation with the cache."""
    from bitconvert.kernels import triton_unavailable_reason

    if triton_unavailable_reason():
        pytest.skip(triton_unavailable_reason())
    fixtures = [str(FIXTURES / f) for f in ("bitnet-2b4t-packed", "llama-packed")]
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", KERNEL_CHECK, json.dumps(PROMPT), *fixtures],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert results == {f: {"gemm": True, "gemv": True, "generate": True} for f in fixtures}


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


def test_generation_stops_at_stop_token():
    model = load_model(FIXTURES / "llama-packed")
    free = generate(model, PROMPT[:4], max_new_tokens=8)
    gen = Generation(model, PROMPT[:4], max_new_tokens=8, stop_tokens={free[2]})
    first = free.index(free[2])
    assert list(gen) == free[: first + 1] and gen.stopped_by == "stop token"


# --- tokenizer and chat template --------------------------------------------------------------


def test_chat_template_and_tokenizer_match_transformers():
    transformers = pytest.importorskip("transformers")
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


# --- command line -------------------------------------------------------------------------------


def test_run_prompt_and_tokens(tmp_path):
    src = FIXTURES / "bitnet-2b4t-packed"
    r = cli("run", src, "--prompt", "The quick brown fox", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    tok = TextTokenizer.from_checkpoint(open_checkpoint(src))
    assert data["prompt_tokens"] == tok.encode_prompt("The quick brown fox")
    model = load_model(src)
    expected = generate(model, data["prompt_tokens"], max_new_tokens=12, stop_tokens={316})
    assert data["tokens"] == expected and data["text"] == tok.decode(expected)
    r = cli("run", src, "--tokens", ",".join(map(str, PROMPT[:5])), "--max-new-tokens", "6", "--ignore-eos")
    assert r.returncode == 0
    assert r.stdout.strip() == ",".join(map(str, generate(model, PROMPT[:5], max_new_tokens=6)))
    human = run_cli("run", src, "--prompt", "Hello", "--max-new-tokens", "4")  # streams text, rates on stderr
    assert human.returncode == 0 and "tok/s" in human.stderr


def test_run_usage_errors():
    src = FIXTURES / "llama-packed"
    assert cli("run", src).returncode == 2
    assert cli("run", src, "--prompt", "x", "--tokens", "1").returncode == 2
    r = cli("run", src, "--tokens", "1,4000")
    assert r.returncode == 2 and "4000" in r.stderr
    assert cli("run", src, "--tokens", "1", "--temperature", "-1").returncode == 2
    assert cli("run", src, "--tokens", "1", "--dtype", "f64").returncode == 2
    assert cli("run", src, "--tokens", "1", "--device", "cuda").returncode == (0 if torch.cuda.is_available() else 2)


def test_logits_command_writes_npy(tmp_path):
    src = FIXTURES / "1bitllm-packed"
    out = tmp_path / "l.npy"
    r = cli("logits", src, "--tokens", "1,2,3,4", "--out", out)
    assert r.returncode == 0, r.stderr
    arr = np.load(out)
    assert arr.dtype == np.float32 and arr.shape == (4, 320)
    assert np.array_equal(arr, compute_logits(src, [1, 2, 3, 4]).numpy())
    assert cli("logits", src, "--tokens", "1", "--out", out).returncode == 2  # exists
    assert cli("logits", src, "--tokens", "1", "--out", out, "--force").returncode == 0
    assert np.load(out).shape == (1, 320)
    assert cli("logits", src, "--tokens", "1", "--out", tmp_path / "no" / "x.npy").returncode == 2
    assert [p.name for p in tmp_path.iterdir()] == ["l.npy"]  # no partial files left behind


def test_runtime_benchmark_plumbing(tmp_path):
    """benchmarks/runtime.py, which the GPU session runs with --device cuda, works end to end on a
    tiny model (runtime engines only: transformers' side is covered by the comparisons above)."""
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "runtime.py"
    out = tmp_path / "runtime.json"
    r = subprocess.run([sys.executable, bench, "--layers", "1", "--vocab", "512", "--prompt", "9", "--decode", "3",
                        "--repeats", "1", "--engines", "bitconvert-bf16,bitconvert-bf16-torch", "--json", out],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    summary = json.loads(out.read_text())
    assert summary["complete"] and [e["engine"] for e in summary["results"]] == ["bitconvert-bf16",
                                                                                  "bitconvert-bf16-torch"]
    assert all(e["kernel_linears"] == "0/7" and len(e["greedy_tokens"]) == 4 for e in summary["results"])
    c = summary["comparison"]["bitconvert-bf16-torch"]
    assert c["against"] == "bitconvert-bf16" and c["greedy_all_equal"] and c["prefill_top1_equal"]
    assert c["decode_ratio_median"] > 0 and c["target_met"] is None  # the 3x target is judged on CUDA only
    assert "decode tok/s bitconvert-bf16-torch / bitconvert-bf16" in r.stdout
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, bench, "--device", "cuda"], capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no CUDA device" in r.stderr
