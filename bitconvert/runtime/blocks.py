"""Runtime blocks: the math of one decoder layer, by the name a family record gives it.

A family (:mod:`bitconvert.model.families`) is data; what computes its layers lives here, under
the name in ``Family.runtime_block``. A block takes its weights by what they do: norms by role
(``family.norm("attn_sub_norm")``), projections by the family's linear paths. Registering a
family whose layers compute what an existing block computes needs nothing here; a family with new
math registers one more block with :func:`register_block`.

``"bitnet"``: the Llama-style decoder layer as transformers' BitNetForCausalLM / LlamaForCausalLM
compute it: RMSNorm in fp32, NeoX (``rotate_half``) RoPE, scaled dot-product attention with
grouped KV heads, gated MLP with the config's activation, and BitNet's sub-norms before
``o_proj`` and ``down_proj`` where the family has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..model.config import ModelConfig
from ..model.families import Family, LinearSpec
from .cache import KVCache
from .linear import DenseLinear, TernaryLinear, rms_norm

Linear = TernaryLinear | DenseLinear

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu2": lambda x: torch.square(F.relu(x)),
    "silu": F.silu,
    "swish": F.silu,
    # transformers' GELUTanh (Gemma's gelu_pytorch_tanh): torch's own tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, past: int, window: int | None = None
) -> torch.Tensor:
    """Causal attention of ``q [heads, T, d]`` over ``k, v [kv_heads, S, d]`` (the past ones first),
    grouped KV heads, scores times ``scaling``; ``[T, heads * d]``. Token ``past + i`` sees every key
    up to itself, or with a ``window`` only itself and the ``window - 1`` keys before it."""
    heads, t, d = q.shape
    kv_heads, s = k.shape[0], k.shape[1]
    groups = heads // kv_heads
    if groups > 1:  # kv head j serves query heads j*groups .. j*groups + groups-1
        k = k[:, None].expand(kv_heads, groups, s, d).reshape(heads, s, d)
        v = v[:, None].expand(kv_heads, groups, s, d).reshape(heads, s, d)
    if window is None and t == 1:
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scaling)
    elif window is None and past == 0:
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=scaling)
    else:  # new tokens after cached ones, or a window: each sees what the mask allows
        seen = torch.arange(s, device=q.device)[None, :]
        at = (past + torch.arange(t, device=q.device))[:, None]
        mask = seen <= at
        if window is not None:
            mask &= seen > at - window
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scaling)
    return out[0].transpose(0, 1).reshape(t, heads * d)


#: the projections a decoder block multiplies with, by the last part of their path (``q_proj`` -> ``q``)
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def projections_of(family: Family, block: str, where: str) -> dict[str, LinearSpec]:
    """The family's linears a block multiplies with, by short name; a one-line CheckpointError naming
    what the family lacks (a projection, or the attention / FFN norm every block applies)."""
    found = {lin.path.rsplit(".", 1)[-1].removesuffix("_proj"): lin for lin in family.linears}
    missing = [p for p in PROJECTIONS if p not in found]
    if missing or family.norm("attn_norm") is None or family.norm("ffn_norm") is None:
        raise CheckpointError(
            where, f"family {family.key!r} lacks what runtime block {block!r} computes with "
            f"({', '.join(missing) or 'attn_norm/ffn_norm'})"
        )  # fmt: skip
    return found


def as_linear(part: object) -> Linear:
    """A loaded projection as the block calls it: a weight the loader did not convert is dense."""
    return part if isinstance(part, (TernaryLinear, DenseLinear)) else DenseLinear(part)  # type: ignore[arg-type]


class BitNetBlock:
    """One decoder layer; call it on the hidden states ``[T, hidden]`` of the tokens being processed."""

    PROJECTIONS = PROJECTIONS  # the attributes below, by short name

    def __init__(self, cfg: ModelConfig, prefix: str, parts: Mapping[str, object], where: str) -> None:
        family = cfg.family
        self.cfg = cfg
        self.eps = cfg.rms_norm_eps
        self.scaling = cfg.head_dim**-0.5
        self.act = ACTIVATIONS[cfg.hidden_act]
        found = projections_of(family, "bitnet", where)

        def tensor(role: str) -> torch.Tensor | None:
            spec = family.norm(role)
            return None if spec is None else parts[f"{prefix}{spec.path}.weight"]  # type: ignore[return-value]

        self.attn_norm = tensor("attn_norm")
        self.ffn_norm = tensor("ffn_norm")
        self.attn_sub_norm = tensor("attn_sub_norm")
        self.ffn_sub_norm = tensor("ffn_sub_norm")
        self.q, self.k, self.v, self.o, self.gate, self.up, self.down = (
            as_linear(parts[f"{prefix}{found[p].path}.weight"]) for p in PROJECTIONS
        )

    def linears(self) -> Iterator[Linear]:
        return iter((self.q, self.k, self.v, self.o, self.gate, self.up, self.down))

    def norms(self) -> Iterator[torch.Tensor]:
        return (n for n in (self.attn_norm, self.ffn_norm, self.attn_sub_norm, self.ffn_sub_norm) if n is not None)

    def __call__(
        self, h: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, past: int
    ) -> torch.Tensor:
        h = h + self.attention(rms_norm(h, self.attn_norm, self.eps), index, cos, sin, cache, past)
        return h + self.mlp(rms_norm(h, self.ffn_norm, self.eps))

    def attention(
        self, x: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, past: int
    ) -> torch.Tensor:
        c = self.cfg
        t, d = x.shape[0], c.head_dim
        q = self.q(x).view(t, c.num_attention_heads, d).transpose(0, 1)
        k = self.k(x).view(t, c.num_key_value_heads, d).transpose(0, 1)
        v = self.v(x).view(t, c.num_key_value_heads, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(index, k, v)
        out = attend(q, k, v, self.scaling, past)
        if self.attn_sub_norm is not None:
            out = rms_norm(out, self.attn_sub_norm, self.eps)
        return self.o(out)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate(x)) * self.up(x)
        if self.ffn_sub_norm is not None:
            h = rms_norm(h, self.ffn_sub_norm, self.eps)
        return self.down(h)


#: runtime block name (``Family.runtime_block``) -> the class computing one layer:
#: ``cls(cfg, cfg.layer_prefix(N), parts, where)``, called as ``block(h, index, cos, sin, cache, past)``
BLOCKS: dict[str, type] = {}


def register_block(name: str, cls: type) -> type:
    """Make ``cls`` the block families name ``name`` (a later one replaces an earlier)."""
    BLOCKS[name] = cls
    return cls


def block_for(cfg: ModelConfig, where: str) -> type:
    """The block that computes ``cfg``'s family; a CheckpointError naming it when the runtime has none."""
    name = cfg.family.runtime_block
    if name not in BLOCKS:
        known = ", ".join(sorted(BLOCKS))
        raise CheckpointError(
            where, f"family {cfg.family.key!r} runs as block {name!r}, which the runtime lacks ({known})"
        )
    return BLOCKS[name]


register_block("bitnet", BitNetBlock)
