"""Architecture families as data: one record per BitNet family, everything the formats and the runtime ask.

A family names its Hugging Face class and ``model_type``, its tensors (every per-layer norm with its
role, dimension and GGUF name; the quantized linears), its activation and embedding tying, the
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
    path: str  # HF module path under ``model.layers.N.``
    dim: str  # one of DIMS
    gguf: str  # GGUF name under ``blk.N.`` (gguf-py's, without ``.weight``)


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

#: the pre-attention and pre-FFN norms of a Llama-style decoder layer
STANDARD_NORMS = (
    NormSpec("attn_norm", "input_layernorm", "hidden", "attn_norm"),
    NormSpec("ffn_norm", "post_attention_layernorm", "hidden", "ffn_norm"),
)

#: global tensors: HF name -> (shape dims, GGUF name)
EMBEDDING = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
GLOBAL_GGUF = {EMBEDDING: "token_embd", FINAL_NORM: "output_norm", LM_HEAD: "output"}


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
    notes: tuple[str, ...] = field(default=())

    def norm(self, role: str) -> NormSpec | None:
        return next((n for n in self.norms if n.role == role), None)

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
