"""Hugging Face <-> GGUF tensor names (built from gguf-py's own name table), and Q/K row order.

gguf-py's ``TensorNameMap`` knows only 1bitLLM's sub-norm names; the three BitNet layouts differ
there, so the map is built per architecture from the config's sub-norm module paths.

llama.cpp's ``llama`` architecture applies RoPE to interleaved pairs where HF rotates halves, so
there the Q and K rows are stored permuted per head (as llama.cpp's converter does).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from ...model.config import ModelConfig
from .metadata import ARCH_LLAMA

if TYPE_CHECKING:
    import torch

_GLOBAL = {
    "model.embed_tokens.weight": MODEL_TENSOR.TOKEN_EMBD,
    "model.norm.weight": MODEL_TENSOR.OUTPUT_NORM,
    "lm_head.weight": MODEL_TENSOR.OUTPUT,
}
_PER_LAYER = {
    "input_layernorm": MODEL_TENSOR.ATTN_NORM,
    "post_attention_layernorm": MODEL_TENSOR.FFN_NORM,
    "self_attn.q_proj": MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": MODEL_TENSOR.ATTN_OUT,
    "mlp.gate_proj": MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": MODEL_TENSOR.FFN_DOWN,
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")
SCALE_SUFFIX = ".scale"


def _layer_modules(config: ModelConfig) -> dict[str, MODEL_TENSOR]:
    modules = dict(_PER_LAYER)
    if config.spec.attn_sub_norm:
        modules[config.spec.attn_sub_norm] = MODEL_TENSOR.ATTN_SUB_NORM
    if config.spec.ffn_sub_norm:
        modules[config.spec.ffn_sub_norm] = MODEL_TENSOR.FFN_SUB_NORM
    return modules


def to_gguf(hf_name: str, config: ModelConfig) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``; None if unknown."""
    if hf_name in _GLOBAL:
        return TENSOR_NAMES[_GLOBAL[hf_name]] + ".weight"
    m = _LAYER.fullmatch(hf_name)
    if m is None:
        return None
    kind = _layer_modules(config).get(m.group(2))
    return TENSOR_NAMES[kind].format(bid=int(m.group(1))) + ".weight" if kind is not None else None


def scale_name(gguf_weight_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``blk.3.attn_q.scale``: the F32 [1] tensor llama.cpp multiplies in."""
    return gguf_weight_name.removesuffix(".weight") + SCALE_SUFFIX


def from_gguf_table(config: ModelConfig) -> dict[str, str]:
    """Every GGUF weight name the config implies -> its HF name."""
    out = {}
    for hf in config.expected_shapes():
        g = to_gguf(hf, config)
        if g is not None:
            out[g] = hf
    return out


# --- Q/K row order ----------------------------------------------------------------------------------

QK_NAMES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight")


def permuted_heads(gguf_arch: str, hf_name: str, config: ModelConfig) -> int | None:
    """The head count whose rows are permuted on disk for this tensor, or None when rows stay in order."""
    if gguf_arch != ARCH_LLAMA or not hf_name.endswith(QK_NAMES):
        return None
    return config.num_attention_heads if hf_name.endswith("q_proj.weight") else config.num_key_value_heads


def permute_qk(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF (rotate-half) row order -> llama.cpp's interleaved RoPE order, per head."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def unpermute_qk(w: torch.Tensor, heads: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()
