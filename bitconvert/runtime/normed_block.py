"""``"normed-projections"``: the decoder layer of the BitNet Embeddings backbones (Qwen3, Gemma3),
driven by the family record.

What differs between the two is data in their records and configs, so one block computes both:

- every projection with an input norm in the record (``Family.input_norm``: ``<proj>.norm.weight``)
  normalizes its own input first, a standard ``w * x_hat`` RMSNorm with Llama's numerics, then runs
  W1.58A8 (:class:`PreNormedLinear`);
- the layer's own norms are found by role: ``attn_norm`` and ``ffn_norm`` before attention and the
  MLP, ``q_norm`` / ``k_norm`` per head before RoPE, ``post_attn_norm`` / ``post_ffn_norm`` on the
  two branches' outputs where the family has them (Gemma3's sandwich); each norm's gain is
  ``offset + w`` with the offset its NormSpec records (Gemma3's own norms: 1);
- attention scores are scaled by ``query_pre_attn_scalar^-0.5`` where the config has one, else
  ``head_dim^-0.5``; a layer the config marks sliding sees only its window
  (``ModelConfig.layer_attention``), and the model hands each layer the RoPE of its base.

Numerics follow transformers' Qwen3Model / Gemma3TextModel: a norm with an offset multiplies in
fp32 before casting back (Gemma3RMSNorm), one without casts back first (Qwen3RMSNorm).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..model.config import ModelConfig
from .blocks import ACTIVATIONS, PROJECTIONS, Linear, as_linear, attend, projections_of, register_block, rotate_half
from .cache import KVCache
from .linear import offset_rms_norm, rms_norm


class PreNormedLinear:
    """A projection that RMS-normalizes its own input with its own gain before multiplying."""

    def __init__(self, linear: Linear, norm: torch.Tensor, eps: float) -> None:
        self.linear = linear
        self.norm = norm
        self.eps = eps
        self.out_features, self.in_features = linear.out_features, linear.in_features

    @property
    def nbytes(self) -> int:
        return self.linear.nbytes + self.norm.numel() * self.norm.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(rms_norm(x, self.norm, self.eps))


class NormedBlock:
    """One decoder layer with per-projection input norms; ``block(h, index, cos, sin, cache, past)``."""

    PROJECTIONS = PROJECTIONS  # the attributes below, by short name
    #: the layer norms this block applies where the family has them (the first two it needs)
    ROLES = ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm", "post_ffn_norm")

    def __init__(self, cfg: ModelConfig, prefix: str, parts: Mapping[str, object], where: str) -> None:
        family = cfg.family
        self.cfg = cfg
        self.eps = cfg.rms_norm_eps
        self.scaling = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.act = ACTIVATIONS[cfg.hidden_act]
        by_short = projections_of(family, family.runtime_block, where)

        def linear(short: str) -> Linear | PreNormedLinear:
            spec = by_short[short]
            lin = as_linear(parts[f"{prefix}{spec.path}.weight"])
            norm = family.input_norm(spec)
            if norm is None:
                return lin
            return PreNormedLinear(lin, parts[f"{prefix}{norm.path}.weight"], self.eps)  # type: ignore[arg-type]

        #: role -> (gain, offset) of the layer's own norms
        self.layer_norms: dict[str, tuple[torch.Tensor, float]] = {}
        for role in self.ROLES:
            spec = family.norm(role)
            if spec is not None:
                self.layer_norms[role] = (parts[f"{prefix}{spec.path}.weight"], spec.offset)  # type: ignore[assignment]
        self.q, self.k, self.v, self.o, self.gate, self.up, self.down = (linear(p) for p in PROJECTIONS)

    def linears(self) -> Iterator[Linear | PreNormedLinear]:
        return iter((self.q, self.k, self.v, self.o, self.gate, self.up, self.down))

    def norms(self) -> Iterator[torch.Tensor]:
        return (gain for gain, _ in self.layer_norms.values())

    def _norm(self, role: str, x: torch.Tensor) -> torch.Tensor:
        if role not in self.layer_norms:
            return x
        gain, offset = self.layer_norms[role]
        return offset_rms_norm(x, gain, self.eps, offset)

    def __call__(
        self, h: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, past: int
    ) -> torch.Tensor:
        a = self.attention(self._norm("attn_norm", h), index, cos, sin, cache, past)
        h = h + self._norm("post_attn_norm", a)
        m = self.mlp(self._norm("ffn_norm", h))
        return h + self._norm("post_ffn_norm", m)

    def attention(
        self, x: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None, past: int
    ) -> torch.Tensor:
        c = self.cfg
        t, d = x.shape[0], c.head_dim
        # per-head norms over head_dim come before the heads are moved to the front, as in transformers
        q = self._norm("q_norm", self.q(x).view(t, c.num_attention_heads, d)).transpose(0, 1)
        k = self._norm("k_norm", self.k(x).view(t, c.num_key_value_heads, d)).transpose(0, 1)
        v = self.v(x).view(t, c.num_key_value_heads, d).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(index, k, v)
        _, window = c.layer_attention(index)
        return self.o(attend(q, k, v, self.scaling, past, window))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


# The BitNet Embeddings families' records name this block; a family whose layer computes the same
# (its norms found by role, its projections normalizing their own inputs) names it too.
register_block("normed-projections", NormedBlock)
