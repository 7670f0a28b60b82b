"""Hugging Face <-> GGUF tensor names, from the family record, and the Q/K row order of RoPE-interleaving architectures.

A family records each norm's and projection's GGUF name (gguf-py's, e.g. ``attn_sub_norm``) and
``Family.global_gguf()`` the global ones (HF names with the family's prefix); gguf-py supplies
the per-layer prefix (``blk.{bid}``) and which projections RoPE rotates (``attn_q``, ``attn_k``).

A family whose GGUF architecture applies RoPE to interleaved pairs where HF rotates halves
(``family.gguf_permutes_qk``: llama.cpp's ``llama``) stores the Q and K rows permuted per head, as
llama.cpp's converter does.
"""

from __future__ import annotations

import re

import numpy as np
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from ...model.config import ModelConfig

#: gguf-py's per-layer prefix, ``blk.{bid}``
_BLOCK, _, _ = TENSOR_NAMES[MODEL_TENSOR.ATTN_Q].rpartition(".")
_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight")
SCALE_SUFFIX = ".scale"
WEIGHT_SUFFIX = ".weight"


def _short(tensor: MODEL_TENSOR) -> str:
    return TENSOR_NAMES[tensor].removeprefix(_BLOCK + ".")


#: the projections RoPE rotates, by GGUF name -> the config field counting their heads
_ROPE_HEADS = {_short(MODEL_TENSOR.ATTN_Q): "num_attention_heads", _short(MODEL_TENSOR.ATTN_K): "num_key_value_heads"}


def name_template(gguf: str) -> str:
    """``blk.{bid}.attn_q``: a per-layer name as gguf-py's TENSOR_NAMES spells it."""
    return f"{_BLOCK}.{gguf}"


def layer_name(layer: int, gguf: str) -> str:
    """``blk.3.attn_q.weight`` for layer 3 and the record's GGUF name ``attn_q``."""
    return f"{_BLOCK.format(bid=layer)}.{gguf}{WEIGHT_SUFFIX}"


def _layer_match(hf_name: str, config: ModelConfig) -> re.Match | None:
    """``layers.N.<module path>.weight`` after the family's prefix: (N, module path); None otherwise."""
    prefix = config.family.prefix
    return _LAYER.fullmatch(hf_name[len(prefix) :]) if hf_name.startswith(prefix) else None


def _layer_modules(config: ModelConfig) -> dict[str, str]:
    """HF module path under ``model.layers.N.`` -> its GGUF name, every norm and projection of the family."""
    family = config.family
    return {spec.path: spec.gguf for spec in (*family.norms, *family.linears)}


def to_gguf(hf_name: str, config: ModelConfig) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``; None if unknown."""
    global_names = config.family.global_gguf()
    if hf_name in global_names:
        return global_names[hf_name] + WEIGHT_SUFFIX
    m = _layer_match(hf_name, config)
    if m is None:
        return None
    gguf = _layer_modules(config).get(m.group(2))
    return layer_name(int(m.group(1)), gguf) if gguf is not None else None


def scale_name(gguf_weight_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``blk.3.attn_q.scale``: the F32 [1] tensor llama.cpp multiplies in."""
    return gguf_weight_name.removesuffix(WEIGHT_SUFFIX) + SCALE_SUFFIX


def from_gguf_table(config: ModelConfig) -> dict[str, str]:
    """Every GGUF weight name the config implies -> its HF name."""
    out = {}
    for hf in config.expected_shapes():
        g = to_gguf(hf, config)
        if g is not None:
            out[g] = hf
    return out


# --- Q/K row order ----------------------------------------------------------------------------------


def permuted_heads(hf_name: str, config: ModelConfig) -> int | None:
    """The head count whose rows are permuted on disk for this tensor, or None when rows stay in order."""
    if not config.family.gguf_permutes_qk:
        return None
    m = _layer_match(hf_name, config)
    field = _ROPE_HEADS.get(_layer_modules(config).get(m.group(2), "")) if m else None
    return getattr(config, field) if field else None


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """HF (rotate-half) row order -> llama.cpp's interleaved RoPE order, per head (a new array)."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2)).reshape(w.shape)


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)).reshape(w.shape)
