"""GGUF architectures: the name a family is written under, what each consumer's graph does, and which
family a file's architecture name stands for.

A family record names its GGUF architecture (``family.gguf_arch``, and ``gguf_arch_i2s`` where
bitnet.cpp loads its I2_S files under another name). What a consumer's graph does with an
architecture is a fact about llama.cpp or bitnet.cpp, not about a family, so it is kept here, by
architecture name (:data:`GRAPHS`): whether it multiplies a ``.scale`` tensor into each ternary
matmul, which activation it applies, which shapes it loads. Reading a file, its
``general.architecture`` is matched against the family records, narrowed by the per-layer norm
tensors the file holds and by its ``{arch}.hidden_activation``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

from ...model.config import ModelConfig
from ...model.families import FAMILIES, Family
from .names import layer_name, name_template

ARCH_BITNET = "bitnet"
ARCH_BITNET_B158 = "bitnet-b1.58"
ARCH_LLAMA = "llama"
ARCH_QWEN3, ARCH_GEMMA3 = "qwen3", "gemma3"
#: older names of a graph, read as that graph (bitnet.cpp's first 2B-4T files say ``bitnet-25``)
ALIASES = {"bitnet-25": ARCH_BITNET_B158}
#: how messages name an activation
ACTIVATION_WORDS = {"silu": "SiLU", "relu2": "relu²", "gelu_pytorch_tanh": "GELU (tanh)"}


@dataclass(frozen=True)
class Graph:
    """What one consumer's graph for a GGUF architecture does (llama-model.cpp / bitnet.cpp)."""

    consumer: str
    #: the FFN activation the graph applies, whatever the file says
    activation: str
    #: it multiplies an F32 ``blk.N.<name>.scale`` tensor into each ternary matmul's output
    scale_tensors: bool = False
    #: it refuses ``output.weight`` (the head is token_embd) and needs heads x head_dim = hidden
    tied_square_only: bool = False


GRAPHS = {
    ARCH_BITNET: Graph("llama.cpp", "silu", scale_tensors=True, tied_square_only=True),
    # bitnet.cpp's builds that load bitnet-b1.58 (llama.cpp fork from 390c3077) build its FFN with SiLU too
    # (microsoft/BitNet#588; the relu² fixes are open): no released runtime computes 2B-4T's relu² from a GGUF
    ARCH_BITNET_B158: Graph("bitnet.cpp", "silu", tied_square_only=True),
    ARCH_LLAMA: Graph("llama.cpp", "silu"),
    ARCH_QWEN3: Graph("llama.cpp", "silu"),
    ARCH_GEMMA3: Graph("llama.cpp", "gelu_pytorch_tanh"),
}
#: a graph no table entry describes: no .scale tensors (scales fold into block d), no shape rules
_UNKNOWN = Graph("its consumer", "")


def graph(arch: str) -> Graph:
    return GRAPHS.get(ALIASES.get(arch, arch), _UNKNOWN)


#: the ``--gguf-type`` values only bitnet.cpp reads: a family with ``gguf_arch_i2s`` is written under it
BITNET_CPP_TYPES = ("i2_s", "tl1", "tl2")


def gguf_architecture(family: Family, gguf_type: str) -> str:
    """The ``general.architecture`` a model of ``family`` is written under with ``--gguf-type gguf_type``."""
    if gguf_type in BITNET_CPP_TYPES and family.gguf_arch_i2s:
        return family.gguf_arch_i2s  # e.g. what bitnet.cpp's ggml-model-i2_s.gguf of 2B-4T declares
    return family.gguf_arch


def families_under(arch: str) -> list[Family]:
    """The families written under GGUF architecture ``arch`` (or the graph it is an older name of)."""
    arch = ALIASES.get(arch, arch)
    return [f for f in FAMILIES.values() if arch in (f.gguf_arch, f.gguf_arch_i2s)]


def family_for(arch: str, activation: str | None, has_tensor: Callable[[str], bool]) -> Family | None:
    """The family a file of GGUF architecture ``arch`` holds: among the families written under it,
    those whose per-layer norms the file has (the most of them), then the one with the file's
    activation, else the one computing what the graph applies (llama.cpp's own converter writes no
    activation); None when no family is written under ``arch``."""
    candidates = families_under(arch)
    if not candidates:
        return None
    fitting = [f for f in candidates if all(has_tensor(layer_name(0, n.gguf)) for n in f.norms)] or candidates
    most = max(len(f.norms) for f in fitting)
    fitting = [f for f in fitting if len(f.norms) == most]
    for want in (activation, graph(arch).activation):
        found = next((f for f in fitting if f.hidden_act == want), None)
        if found is not None:
            return found
    return fitting[0]


def tensors_unknown_to(family: Family, arch: str) -> list[str]:
    """The family's per-layer GGUF names that llama.cpp's loader for ``arch`` does not know (gguf-py's
    table of the tensors each architecture has is what it loads); none for an architecture outside it."""
    by_name = {name: a for a, name in MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        return []
    known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[by_name[arch]]}
    return [s.gguf for s in (*family.norms, *family.linears) if name_template(s.gguf) not in known]


def loading_warnings(cfg: ModelConfig, arch: str) -> list[str]:
    """What the consumer of ``arch`` will not load of a model of ``cfg``, or will compute differently, in words."""
    g, family, hidden_act = graph(arch), cfg.family, cfg.hidden_act
    out = []
    unknown = tensors_unknown_to(family, arch)
    if unknown:
        out.append(
            f"upstream {g.consumer}'s {arch!r} architecture has no {', '.join(unknown)} tensors and refuses a file "
            f"holding them: this {family.key} model needs a runtime that applies them (bitnet.cpp's embedding build)"
        )
    if g.tied_square_only and cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
        out.append(
            f"heads x head_dim ({cfg.num_attention_heads} x {cfg.head_dim}) differs from hidden_size "
            f"({cfg.hidden_size}): {g.consumer}'s {arch!r} architecture cannot load this model"
        )
    if g.tied_square_only and not cfg.tie_word_embeddings:
        out.append(
            f"untied embeddings: output.weight written, which {g.consumer}'s {arch!r} architecture refuses to load"
        )
    if g.activation and hidden_act != g.activation:
        words = ACTIVATION_WORDS.get(hidden_act, hidden_act)
        where = ""
        if family.gguf_arch_i2s and graph(family.gguf_arch_i2s).activation == hidden_act:
            i2s = graph(family.gguf_arch_i2s)
            where = f" ({i2s.consumer}'s I2_S build, --gguf-type i2_s, applies {words})"
        out.append(
            f"upstream {g.consumer} runs the {arch} architecture with {ACTIVATION_WORDS.get(g.activation, g.activation)}; "
            f"this {words} model ({family.key}) gives wrong logits there{where}"
        )
    return out
