"""Architecture families as data: one record per BitNet family, everything the formats and the runtime ask.

A family names its Hugging Face class and ``model_type``, its tensors (the name prefix its
checkpoints use, every per-layer norm with its role, dimension, GGUF name and the offset its norm
adds to the stored gain; the quantized linears), its activation, embedding tying and scaling, the
config defaults of its transformers class, its task (a causal LM or an embedding model), the
architecture names llama.cpp and bitnet.cpp load it under, whether a Nanotron model can hold it,
and the runtime block that computes it. Adding a family is one record in :data:`FAMILIES` (and, if
its math is new, one runtime block). Nothing else in the project lists families.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: dimensions a tensor shape is written in, resolved from the config (see ModelConfig.dims)
DIMS = ("vocab", "hidden", "intermediate", "q", "kv", "head_dim")


@dataclass(frozen=True)
class NormSpec:
    """One per-layer norm weight: what it does, where it sits, its length, its GGUF name."""

    role: str  # e.g. "attn_norm", "ffn_norm", "attn_sub_norm", "ffn_sub_norm" (the runtime reads roles)
    path: str  # HF module path under the family's ``layers.N.``
    dim: str  # one of DIMS
    gguf: str  # GGUF name under ``blk.N.`` (gguf-py's, without ``.weight``)
    #: the norm computes ``(offset + w) * x_hat`` from its stored gain ``w`` (Gemma's own norms: 1);
    #: GGUF architectures store the effective gain ``offset + w``, as llama.cpp's graphs multiply by it
    offset: float = 0.0


@dataclass(frozen=True)
class LinearSpec:
    """One quantized linear projection per layer: ``[out, in]`` in named dimensions."""

    path: str
    out: str
    into: str
    gguf: str


#: the seven projections every BitNet family quantizes
LINEARS = (
    LinearSpec("self_attn.q_proj", "q", "hidden", "attn_q"),
    LinearSpec("self_attn.k_proj", "kv", "hidden", "attn_k"),
    LinearSpec("self_attn.v_proj", "kv", "hidden", "attn_v"),
    LinearSpec("self_attn.o_proj", "hidden", "q", "attn_output"),
    LinearSpec("mlp.gate_proj", "intermediate", "hidden", "ffn_gate"),
    LinearSpec("mlp.up_proj", "intermediate", "hidden", "ffn_up"),
    LinearSpec("mlp.down_proj", "hidden", "intermediate", "ffn_down"),
)

#: the role and GGUF-name ending of a projection's own input norm (``attn_q`` -> ``attn_q_norm_in``)
INPUT_NORM_SUFFIX = "_norm_in"


def input_norms(linears: tuple[LinearSpec, ...] = LINEARS) -> tuple[NormSpec, ...]:
    """One standard (``w * x_hat``) RMSNorm before each projection, stored as ``<proj>.norm.weight``
    over its input features; GGUF names as bitnet.cpp's embedding converter writes them."""
    return tuple(
        NormSpec(lin.gguf + INPUT_NORM_SUFFIX, lin.path + ".norm", lin.into, lin.gguf + INPUT_NORM_SUFFIX)
        for lin in linears
    )


#: the pre-attention and pre-FFN norms of a Llama-style decoder layer
STANDARD_NORMS = (
    NormSpec("attn_norm", "input_layernorm", "hidden", "attn_norm"),
    NormSpec("ffn_norm", "post_attention_layernorm", "hidden", "ffn_norm"),
)

#: what a checkpoint's tensor names start with when the family says nothing else: a
#: ``...ForCausalLM`` save puts the backbone under ``model.``
DEFAULT_PREFIX = "model."
#: the global tensors by role: their name after the family's prefix (the head has none), their GGUF name
EMBEDDING_ROLE, FINAL_NORM_ROLE, LM_HEAD_ROLE = "embedding", "final_norm", "lm_head"
GLOBAL_NAMES = {EMBEDDING_ROLE: "embed_tokens.weight", FINAL_NORM_ROLE: "norm.weight"}
LM_HEAD = "lm_head.weight"
GLOBAL_GGUF_BY_ROLE = {EMBEDDING_ROLE: "token_embd", FINAL_NORM_ROLE: "output_norm", LM_HEAD_ROLE: "output"}
#: the global names of a family with the default prefix (what most checkpoints hold) -> GGUF name
EMBEDDING = DEFAULT_PREFIX + GLOBAL_NAMES[EMBEDDING_ROLE]
FINAL_NORM = DEFAULT_PREFIX + GLOBAL_NAMES[FINAL_NORM_ROLE]
GLOBAL_GGUF = {EMBEDDING: "token_embd", FINAL_NORM: "output_norm", LM_HEAD: "output"}

#: what a family's model computes: the next token's logits, or one vector per text
CAUSAL_LM = "causal-lm"
EMBEDDING_TASK = "embedding"


@dataclass(frozen=True)
class Family:
    """Everything bitconvert knows about one BitNet architecture family."""

    key: str  # bitconvert's name for it (``inspect`` shows it)
    title: str  # for people
    hf_architecture: str  # the class config.json names (case matters: BitNet vs Bitnet)
    model_type: str  # the config's model_type
    hidden_act: str  # the activation when the config names none
    tied_by_default: bool  # transformers' class default for tie_word_embeddings
    norms: tuple[NormSpec, ...] = STANDARD_NORMS
    linears: tuple[LinearSpec, ...] = LINEARS
    #: model_type values that select this family when no ``architectures`` entry names a family
    model_types: tuple[str, ...] = ()
    #: GGUF: llama.cpp's architecture name, and bitnet.cpp's where it loads this family's I2_S under another
    gguf_arch: str = "bitnet"
    gguf_arch_i2s: str | None = None
    #: the GGUF architecture applies RoPE to interleaved pairs (llama): Q/K rows are stored permuted
    gguf_permutes_qk: bool = False
    #: a Nanotron BitNet model can hold it
    nanotron: bool = True
    #: the runtime block that computes a layer (bitconvert.runtime.blocks)
    runtime_block: str = "bitnet"
    #: what the model computes (CAUSAL_LM or EMBEDDING_TASK; an embedding model's pooling and
    #: normalisation come from its sentence-transformers side files)
    task: str = CAUSAL_LM
    #: what every tensor name of the backbone starts with (``model.``; a ``Qwen3Model`` save has none)
    prefix: str = DEFAULT_PREFIX
    #: the offset the final norm adds to its stored gain (see NormSpec.offset)
    final_norm_offset: float = 0.0
    #: config.json keys naming the activation, the first the one written (Gemma: hidden_activation)
    activation_keys: tuple[str, ...] = ("hidden_act",)
    #: the token embeddings are multiplied by this before the first layer: "none" or "sqrt_hidden"
    #: (Gemma: sqrt(hidden_size), rounded to the compute dtype first, as transformers does)
    embedding_scale: str = "none"
    #: transformers' class defaults for keys a config.json may leave out (e.g. Qwen3's head_dim 128,
    #: not hidden / heads; Gemma3's rope bases, sliding window and its layer pattern)
    config_defaults: tuple[tuple[str, object], ...] = ()
    #: how GGUF holds the vocabulary: "gpt2" (byte-level BPE, merges) or "llama" (SentencePiece-style
    #: pieces with scores, read from a byte-fallback BPE tokenizer.json)
    gguf_vocab: str = "gpt2"
    notes: tuple[str, ...] = field(default=())

    def norm(self, role: str) -> NormSpec | None:
        return next((n for n in self.norms if n.role == role), None)

    def default(self, key: str, fallback: object = None) -> object:
        """The transformers class default of config key ``key`` (``fallback`` where the record has none)."""
        return dict(self.config_defaults).get(key, fallback)

    def global_name(self, role: str) -> str:
        """The HF name of a global tensor (EMBEDDING_ROLE, FINAL_NORM_ROLE, LM_HEAD_ROLE) in this family."""
        return LM_HEAD if role == LM_HEAD_ROLE else self.prefix + GLOBAL_NAMES[role]

    def global_gguf(self) -> dict[str, str]:
        """HF name -> GGUF name of the global tensors."""
        return {self.global_name(role): gguf for role, gguf in GLOBAL_GGUF_BY_ROLE.items()}

    def layer_prefix(self, layer: int) -> str:
        """``model.layers.3.`` (or ``layers.3.`` for a family without a prefix)."""
        return f"{self.prefix}layers.{layer}."

    def input_norm(self, linear: LinearSpec) -> NormSpec | None:
        """The RMSNorm a projection applies to its own input (BitNet Embeddings' ``<proj>.norm``), if any."""
        return self.norm(linear.gguf + INPUT_NORM_SUFFIX)

    def layer_tensors(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each per-layer tensor's path (without ``.weight``) and shape dims, in checkpoint order: the
        layer's own norms, the projections, then the norms inside its sub-modules."""
        own = [(n.path, (n.dim,)) for n in self.norms if "." not in n.path]
        inner = [(n.path, (n.dim,)) for n in self.norms if "." in n.path]
        return own + [(lin.path, (lin.out, lin.into)) for lin in self.linears] + inner


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the table (a later record with the same key replaces the earlier one)."""
    FAMILIES[family.key] = family
    return family


def family_named(key: str) -> Family:
    return FAMILIES[key]


def detect_family(architectures: list[str], model_type: object) -> Family | None:
    """The family a config.json names: its first ``architectures`` entry, else its ``model_type``."""
    name = architectures[0] if architectures else ""
    for family in FAMILIES.values():
        if name == family.hf_architecture:
            return family
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    return None


register_family(Family(
    "bitnet-b1.58", "BitNet b1.58 2B-4T (microsoft/bitnet-b1.58-2B-4T)", "BitNetForCausalLM", "bitnet", "relu2", False,
    norms=STANDARD_NORMS + (
        NormSpec("attn_sub_norm", "self_attn.attn_sub_norm", "q", "attn_sub_norm"),
        NormSpec("ffn_sub_norm", "mlp.ffn_sub_norm", "intermediate", "ffn_sub_norm"),
    ),
    model_types=("bitnet",), gguf_arch="bitnet", gguf_arch_i2s="bitnet-b1.58",
))  # fmt: skip
register_family(Family(
    "1bitllm", "1bitLLM bitnet_b1_58 (remote code BitnetForCausalLM)", "BitnetForCausalLM", "llama", "silu", True,
    norms=STANDARD_NORMS + (
        NormSpec("attn_sub_norm", "self_attn.inner_attn_ln", "q", "attn_sub_norm"),
        NormSpec("ffn_sub_norm", "mlp.ffn_layernorm", "intermediate", "ffn_sub_norm"),
    ),
    gguf_arch="bitnet",
))  # fmt: skip
register_family(Family(
    "llama", "Llama architecture, 1.58-bit (HF1BitLLM, Falcon3 1.58-bit)", "LlamaForCausalLM", "llama", "silu", False,
    model_types=("llama",), gguf_arch="llama", gguf_permutes_qk=True,
))  # fmt: skip

def head_norms(offset: float = 0.0) -> tuple[NormSpec, ...]:
    """Per-head RMSNorms of the queries and keys (Qwen3, Gemma3), over head_dim."""
    return (
        NormSpec("q_norm", "self_attn.q_norm", "head_dim", "attn_q_norm", offset),
        NormSpec("k_norm", "self_attn.k_norm", "head_dim", "attn_k_norm", offset),
    )


register_family(Family(
    "qwen3-embedding", "BitNet Embeddings, Qwen3 backbone (microsoft/bitnet-embedding-0.6b)", "Qwen3Model", "qwen3",
    "silu", False,
    norms=STANDARD_NORMS + head_norms() + input_norms(),
    model_types=("qwen3",), gguf_arch="qwen3", nanotron=False, runtime_block="normed-projections",
    task=EMBEDDING_TASK, prefix="",
    config_defaults=(
        ("head_dim", 128), ("rope_theta", 10000.0), ("max_position_embeddings", 32768), ("sliding_window", 4096),
        ("max_window_layers", 28),
    ),
))  # fmt: skip
#: Gemma3's own RMSNorms compute (1 + w) * x_hat; the per-projection input norms are standard (w * x_hat)
GEMMA_OFFSET = 1.0
register_family(Family(
    "gemma3-embedding", "BitNet Embeddings, Gemma3 backbone (microsoft/bitnet-embedding-270m)", "Gemma3TextModel",
    "gemma3_text", "gelu_pytorch_tanh", True,
    norms=(
        NormSpec("attn_norm", "input_layernorm", "hidden", "attn_norm", GEMMA_OFFSET),
        NormSpec("post_attn_norm", "post_attention_layernorm", "hidden", "post_attention_norm", GEMMA_OFFSET),
        NormSpec("ffn_norm", "pre_feedforward_layernorm", "hidden", "ffn_norm", GEMMA_OFFSET),
        NormSpec("post_ffn_norm", "post_feedforward_layernorm", "hidden", "post_ffw_norm", GEMMA_OFFSET),
    ) + head_norms(GEMMA_OFFSET) + input_norms(),
    model_types=("gemma3_text",), gguf_arch="gemma3", nanotron=False, runtime_block="normed-projections",
    task=EMBEDDING_TASK, prefix="", final_norm_offset=GEMMA_OFFSET,
    activation_keys=("hidden_activation", "hidden_act"), embedding_scale="sqrt_hidden", gguf_vocab="llama",
    config_defaults=(
        ("head_dim", 256), ("rope_theta", 1_000_000.0), ("rope_local_base_freq", 10_000.0),
        ("query_pre_attn_scalar", 256), ("sliding_window", 4096), ("sliding_window_pattern", 6),
        ("max_position_embeddings", 131_072),
    ),
))  # fmt: skip
