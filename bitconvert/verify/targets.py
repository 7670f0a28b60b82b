"""``verify --target CONSUMER``: what each consumer of a BitNet checkpoint is known to compute.

The table below is the one place these facts live: each :class:`Rule` says what one consumer does,
where that is written (upstream file and line at the commit we checked, or the issue), and checks
a checkpoint against it. A rule fails where the consumer would compute a different model than the
reference runtime (``bitconvert/runtime``), or would not load it at all. Where the consumer runs in
this project's tests (transformers, llama-cpp-python 0.3.36, Nanotron on CPU), tests/peers/
shows the fact by running it. docs/consumers.md lists the same table for people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, UsageError
from ..formats import open_checkpoint
from ..formats.gguf import i2s_layouts
from ..formats.nanotron.flavors import NANOTRON_ROPE_THETA
from . import consumer_checks as c
from . import nanotron_checks as n
from . import gpu_checks as g
from .report import Check, VerifyReport

TRANSFORMERS = "huggingface/transformers v5.23"
LLAMA_CPP = "ggml-org/llama.cpp@0c1e57098"
BITNET_CPP = "microsoft/BitNet@16da220"
#: bitnet.cpp's first release, the one tests/peers/test_bitnet_cpp_runtime.py runs (prebuilt)
BITNET_CPP_RELEASE = "microsoft/BitNet@c82b5e6 (llama.cpp submodule Eddie-Wang1120/llama.cpp@406a5036)"
NT_PR180 = "huggingface/nanotron@2239f41e (PR #180 head)"
NT_PR178 = "huggingface/nanotron@e1c3c1a5 (PRs #178/#179)"
NT_MAIN = "huggingface/nanotron@2411b022 (main)"
BITNET_GPU = f"{BITNET_CPP} gpu/"


@dataclass(frozen=True)
class Rule:
    name: str
    #: what the consumer does, in one sentence
    fact: str
    #: where the fact is written: upstream project + path (line) at the checked commit, or an issue URL
    source: str
    check: Callable[[c.Subject], c.Finding]


@dataclass(frozen=True)
class Consumer:
    name: str
    what: str
    rules: tuple[Rule, ...]


_LLAMACPP_ACTIVATION = Rule(
    "ffn_activation",
    "the `bitnet` architecture runs the FFN with SiLU whatever `hidden_activation` says",
    f"{LLAMA_CPP} src/models/bitnet.cpp (build_ffn(..., LLM_FFN_SILU, LLM_FFN_PAR)); relu² support proposed and "
    "closed unmerged: https://github.com/ggml-org/llama.cpp/pull/25885, https://github.com/ggml-org/llama.cpp/pull/26751",
    c.llamacpp_ffn_activation,
)
_BITNETCPP_ACTIVATION = Rule(
    "ffn_activation",
    "its first release has no relu² graph; builds from its llama.cpp submodule at 390c3077 on run 2B-4T's relu² "
    "FFN with SiLU",
    f"https://github.com/microsoft/BitNet/issues/588; {BITNET_CPP_RELEASE} src/llama.cpp (LLM_ARCH_BITNET: SiLU)",
    c.bitnetcpp_ffn_activation,
)
_BITNETCPP_ARCHITECTURE = Rule(
    "architecture",
    "its first release knows the architectures `bitnet` (1bitLLM) and `llama`, not `bitnet-b1.58` (2B-4T), which "
    "builds from llama.cpp 390c3077 on load",
    f"{BITNET_CPP_RELEASE} src/llama.cpp:219-259 (LLM_ARCH_NAMES); run in tests/peers/test_bitnet_cpp_runtime.py",
    c.bitnetcpp_architecture,
)
_BITNETCPP_TYPES = Rule(
    "tensor_types",
    f"its first release loads {', '.join(c.BITNET_CPP_TYPES)}; TL1/TL2 only where it is built with the lookup-table "
    "kernels generated for the file's weight shapes (not the default build)",
    f"{BITNET_CPP_RELEASE} (each type run in tests/peers/test_bitnet_cpp_runtime.py); {BITNET_CPP} setup_env.py "
    "(-DBITNET_X86_TL2=OFF / -DBITNET_ARM_TL1=OFF), utils/codegen_tl1.py, utils/codegen_tl2.py",
    c.bitnetcpp_tensor_types,
)
_BITNETCPP_LAYOUT_SOURCE = (f"{BITNET_CPP} src/ggml-bitnet-mad.cpp:11-14 (QK_I2_S 128 on x86, 64 on ARM), quantize_i2_s "
                            ":51 (x86 with ACT_PARALLEL :53, ARM NEON :151)")


def _bitnetcpp(layout: str, build: str) -> tuple[Rule, ...]:
    return (
        _BITNETCPP_ARCHITECTURE,
        _BITNETCPP_TYPES,
        _BITNETCPP_ACTIVATION,
        Rule("i2_s_layout", f"{build} reads I2_S in the {layout} byte layout; other layouts are other codes",
             _BITNETCPP_LAYOUT_SOURCE, c.bitnetcpp_i2_s_layout(layout)),
        Rule("i2_s_rows", f"the {layout} layout packs blocks of {i2s_layouts.BLOCK[layout]} values",
             _BITNETCPP_LAYOUT_SOURCE, c.bitnetcpp_rows(layout)),
    )


_NT_SUB_NORMS = Rule(
    "sub_norms",
    "no Nanotron model has the attention / FFN sub-norms of 2B-4T and 1bitLLM",
    f"{NT_PR180} and {NT_PR178} src/nanotron/models/llama_bitnet.py:602-640 (LlamaDecoderLayerBitNet); "
    f"{NT_MAIN} src/nanotron/models/llama.py (LlamaDecoderLayer)",
    n.nanotron_sub_norms,
)


def _nt_rope(flavor: str) -> Rule:
    return Rule(
        "rope_theta",
        f"the BitNet config has no rope_theta: RoPE runs with base {NANOTRON_ROPE_THETA:g}",
        "src/nanotron/config/models_config.py:69-92 (LlamaBitNetConfig), src/nanotron/models/llama_bitnet.py:51 "
        "(RotaryEmbedding theta=10000.0) and :321-324 (built without theta), at 2239f41e and e1c3c1a5",
        n.nanotron_rope_theta(flavor),
    )


_NT_FUSED = Rule(
    "fused_scales",
    "weight_quant takes one absmean per (rank-local) fused qkv_proj / gate_up_proj weight",
    "src/nanotron/parallel/tensor_parallel/nn.py: weight_quant at :326 and its use in the column linear at "
    ":418 (2239f41e); :314, :381 (e1c3c1a5)",
    n.nanotron_fused_scales,
)

CONSUMERS: dict[str, Consumer] = {
    k.name: k
    for k in (
        Consumer("transformers", "transformers' BitNet integration (hf-packed / hf-bf16)", (
            Rule("format", "loads BitNet models from safetensors + config.json; its GGUF loader knows `llama` (and "
                           "dequantizes to floats), not `bitnet`",
                 f"{TRANSFORMERS} src/transformers/integrations/ggml.py (GGUF_CONFIG_MAPPING)",
                 c.transformers_format),
            Rule("layout", "its BitNet model names the sub-norms attn_sub_norm / ffn_sub_norm; 1bitLLM's "
                           "inner_attn_ln / ffn_layernorm exist only in that repository's remote code",
                 f"{TRANSFORMERS} src/transformers/models/bitnet/modeling_bitnet.py", c.transformers_layout),
            Rule("scale_meaning", "weight_scale is divided out by BitLinear (linear_class bitlinear, the default) "
                                  "and multiplied in by AutoBitLinear (autobitlinear)",
                 f"{TRANSFORMERS} src/transformers/integrations/bitnet.py:182 (BitLinear) and :281 (AutoBitLinear)",
                 c.transformers_scale_meaning),
        )),
        Consumer("llama.cpp", "upstream llama.cpp (and llama-cpp-python 0.3.36), GGUF TQ1_0 / TQ2_0", (
            Rule("architecture", "knows the architectures `bitnet` and `llama`, not bitnet.cpp's `bitnet-b1.58` / "
                                 "`bitnet-25`", f"{LLAMA_CPP} gguf-py/gguf/constants.py:1343 (MODEL_ARCH.BITNET)",
                 c.llamacpp_architecture),
            Rule("tensor_types", "has TQ1_0 (34) and TQ2_0 (35) in blocks of 256 values, no type 36 (I2_S)",
                 f"{LLAMA_CPP} gguf-py/gguf/constants.py:5793-5794 (types), :5957 (QK_K = 256), :5988-5989",
                 c.llamacpp_tensor_types),
            Rule("known_tensors", "loads, per architecture, the tensors gguf-py's table lists for it and refuses a "
                                  "file holding others (\"wrong number of tensors\")",
                 f"{LLAMA_CPP} gguf-py/gguf/constants.py (MODEL_TENSORS); llama-cpp-python 0.3.36 on a GGUF "
                 "with per-projection norms: \"wrong number of tensors; expected 38, got 24\"",
                 c.llamacpp_known_tensors),
            _LLAMACPP_ACTIVATION,
            Rule("scale_tensors", "multiplies optional F32 `blk.N.*.scale` [1] tensors in, in every architecture "
                                  "(a generic pass; before it, only `bitnet` loaded them)",
                 f"{LLAMA_CPP} src/llama-model.cpp (\"generic pass: load optional per-tensor .scale tensors\": "
                 "wq_s = create_tensor(tn(LLM_TENSOR_ATTN_Q, \"scale\", i), {1}, TENSOR_NOT_REQUIRED), ...)",
                 c.llamacpp_scale_tensors),
        )),
        Consumer("bitnet.cpp", "bitnet.cpp built for x86 (the default build, ACT_PARALLEL)",
                 _bitnetcpp("x86", "the default x86 build")),
        Consumer("bitnet.cpp-arm", "bitnet.cpp built for ARM (NEON)", _bitnetcpp("arm", "an ARM build")),
        Consumer("nanotron-pr180", "Nanotron's BitNet model at the head of PR #180", (
            _NT_SUB_NORMS,
            Rule("decoder_norms", "has no input_layernorm / post_attention_layernorm; every BitLinear normalizes its "
                                  "input without a weight",
                 f"{NT_PR180} src/nanotron/models/llama_bitnet.py:611, :619, :628, :635 (commented out); "
                 "src/nanotron/parallel/tensor_parallel/nn.py:344 (normalize), :416, :511",
                 n.nanotron_decoder_norms("pr180")),
            _nt_rope("pr180"), _NT_FUSED,
        )),
        Consumer("nanotron-pr178", "Nanotron's BitNet model of PRs #178/#179",
                 (_NT_SUB_NORMS, _nt_rope("pr178"), _NT_FUSED)),
        Consumer("bitnet-gpu", "microsoft/BitNet's gpu/ model and W2A8 CUDA kernel (model_state_int2.pt / _fp16.pt)", (
            Rule("format", "generate.py loads the two torch.save files gpu/convert_checkpoint.py writes",
                 f"{BITNET_GPU}README.md (end-to-end inference), convert_checkpoint.py", g.gpu_format),
            Rule("model", "every block has attention and FFN sub-norms and a squared-ReLU FFN",
                 f"{BITNET_GPU}model.py (Attention.attn_sub_norm, FeedForward.ffn_sub_norm, squared_relu)", g.gpu_model),
            Rule("model_args", "the model is built from ModelArgs() defaults: 2B-4T's sizes, RoPE base 500000",
                 f"{BITNET_GPU}model.py:40-49 (ModelArgs)", g.gpu_model_args),
            Rule("kernel_shapes", "bitlinear_int8xint2 has kernels for ten (N, K) shapes at M = 1; any other prints "
                                  "'required ladder gemm kernel' and returns zeros",
                 f"{BITNET_GPU}bitnet_kernels/bitnet_kernels.cu:3-35", g.gpu_kernel_shapes),
            Rule("fused_scales", "the kernel scales row r by ws[r / (N / ws_num)] (wqkv 3840 x 2560: ws_num 3, equal "
                                 "thirds of 1280 rows), not by the q/k/v split 2560/640/640",
                 f"{BITNET_GPU}bitnet_kernels/bitnet_kernels.h:80-82, bitnet_kernels.cu:4-5", g.gpu_fused_scales),
        )),
        Consumer("nanotron-main", "upstream Nanotron main (Llama, no BitNet)", (
            _NT_SUB_NORMS,
            Rule("quantization", "has no BitNet layers: Llama's linears run the weights as given",
                 f"{NT_MAIN} src/nanotron/models/ (no llama_bitnet.py), src/nanotron/models/llama.py "
                 "(TensorParallelColumnLinear / TensorParallelRowLinear)", n.nanotron_quantization("main")),
        )),
    )
}


def consumer(name: str) -> Consumer:
    if name not in CONSUMERS:
        raise UsageError(f"unknown --target {name!r}; known consumers: {', '.join(CONSUMERS)}")
    return CONSUMERS[name]


def verify_target(src: str | Path, target: str, *, format: str | None = None) -> VerifyReport:
    """One check per rule of ``target``: ``{consumer}.{rule}``, failing where that consumer would
    compute a different model than the reference runtime. Raises ``UsageError`` for an unknown
    consumer or a missing SRC; an unreadable checkpoint is a failed ``open`` check."""
    who = consumer(target)
    report = VerifyReport(str(src), mode="target")
    report.figures["target"] = who.name
    try:
        ckpt = open_checkpoint(src, format)
        facts = c.gather(ckpt)
    except CheckpointError as exc:
        report.add(Check("open", False, f"{exc.path}: {exc.problem}", exc.tensor))
        return report
    for rule in who.rules:
        try:
            found = rule.check(facts)
        except CheckpointError as exc:
            found = c.Finding(False, f"cannot check: {exc.path}: {exc.problem}", tensor=exc.tensor)
        verdict = "" if found.passed else f" [{who.name}: {rule.fact}; source: {rule.source}]"
        report.add(Check(f"{who.name}.{rule.name}", found.passed, found.detail + verdict, found.tensor,
                         found.figure, found.threshold))
    if ckpt.facts.gguf is None and who.name.startswith(("llama.cpp", "bitnet.cpp")):
        report.notes.append(f"{ckpt.format} SRC: GGUF rules checked for what `convert --to gguf` would write")
    report.figures["failed"] = len(report.failures)
    return report
