"""The consumer rules about Nanotron's codebases: what each flavor's model holds (its facts come from
:mod:`bitconvert.formats.nanotron.flavors`), and how far Nanotron's quantization of a fused weight
is from the per-projection one. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..dtypes import Dense
from ..formats.nanotron.flavors import FLAVORS, NANOTRON_ROPE_THETA
from ..formats.nanotron.layout import param_specs
from ..model.checkpoint import Checkpoint
from ..model.config import ModelConfig
from ..ternary.linear_class import LinearClass
from ..ternary.quantize import quantize
from ..ternary.weight import TernaryWeight
from .consumer_checks import Finding, Subject


def nanotron_sub_norms(f: Subject) -> Finding:
    subs = [n.path for n in f.cfg.family.norms if n.role in ("attn_sub_norm", "ffn_sub_norm")]
    if subs:
        return Finding(False, f"the model has sub-norms ({', '.join(subs)}); no Nanotron model applies them: it "
                              "computes the network without them", tensor=f"{f.cfg.layer_prefix(0)}{subs[0]}.weight")
    return Finding(True, "no sub-norms")


def nanotron_decoder_norms(flavor: str) -> Callable[[Subject], Finding]:
    """Whether ``flavor``'s decoder layer applies the model's input / post-attention norm weights."""

    def check(f: Subject) -> Finding:
        if FLAVORS[flavor].decoder_norms:
            return Finding(True, f"{FLAVORS[flavor].title} applies input_layernorm and post_attention_layernorm")
        return Finding(False, f"{FLAVORS[flavor].title} has no input_layernorm / post_attention_layernorm and "
                              "normalizes every BitLinear's input without a weight: the model's decoder norm weights "
                              "are not applied")

    return check


def nanotron_rope_theta(flavor: str) -> Callable[[Subject], Finding]:
    """The RoPE base ``flavor`` runs with: the config's where it has the field, else Nanotron's default."""

    def check(f: Subject) -> Finding:
        theta = f.cfg.rope_theta
        if FLAVORS[flavor].rope_in_config:
            return Finding(True, f"rope_theta {theta:g}, a config field of {FLAVORS[flavor].title}", theta)
        ok = theta == NANOTRON_ROPE_THETA
        detail = f"rope_theta {theta:g}" + ("" if ok else f": the BitNet model's RoPE base is {NANOTRON_ROPE_THETA:g}")
        return Finding(ok, detail, theta, NANOTRON_ROPE_THETA)

    return check


def nanotron_quantization(flavor: str) -> Callable[[Subject], Finding]:
    """Whether ``flavor``'s linear layers quantize their weights at all."""

    def check(f: Subject) -> Finding:
        if FLAVORS[flavor].bitnet:
            return Finding(True, f"{FLAVORS[flavor].title} quantizes its linear weights (BitNet b1.58)")
        return Finding(False, f"{FLAVORS[flavor].title} has no BitNet layers: it runs the latent weights as plain "
                              "floats, unquantized, and activations in full precision")

    return check


def _effective(latent: np.ndarray) -> np.ndarray:
    """The ternary weight absmean quantization makes of float32 ``latent`` (Nanotron's ``weight_quant``,
    transformers' online mode): codes x mean|W|, as float64."""
    tw = quantize(Dense.of(np.ascontiguousarray(latent, dtype=np.float32)), LinearClass.BITLINEAR, "F32")
    return tw.dequantize("F32").float64()


def nanotron_fused_scales(f: Subject) -> Finding:
    """Nanotron quantizes the fused qkv_proj / gate_up_proj with one absmean: how far that weight is
    from the reference's per-projection weights (TP 1), as the worst relative Frobenius error."""
    worst, where = 0.0, None
    for parts in fused_parameters(f.cfg).values():
        err = _fused_error(f.ckpt, parts)
        if err is not None and err > worst:
            worst, where = err, parts[0]
    ok = worst == 0.0
    detail = "q/k/v (and gate/up) are quantized with one absmean per fused weight"
    detail += "" if ok else f"; the weights differ from the reference's per-projection ones by up to {worst:.3g}"
    return Finding(ok, detail, worst, 0.0, where)


def fused_parameters(cfg: ModelConfig) -> dict[tuple[int, str], tuple[str, ...]]:
    """(layer, Nanotron parameter name) -> the HF tensors that fused parameter concatenates, in
    Nanotron's own layout (``decoder/<i>/pp_block/attn/qkv_proj`` = q|k|v rows)."""
    out = {}
    for spec in param_specs(cfg, cfg.vocab_size):
        if len(spec.parts) > 1:
            layer = int(spec.path.split("/")[1])
            out[layer, spec.path.rsplit("/", 1)[-1]] = tuple(p.hf_name for p in spec.parts)
    return out


def fused_error(ckpt: Checkpoint, layer: int, fused: str) -> float | None:
    """Relative Frobenius difference between Nanotron's quantization of the fused weight ``fused``
    (``qkv_proj`` or ``gate_up_proj``) of ``layer`` and the reference's per-projection weights."""
    return _fused_error(ckpt, fused_parameters(ckpt.config)[layer, fused])


def _fused_error(ckpt: Checkpoint, parts: tuple[str, ...]) -> float | None:
    if not all(ckpt.is_quantized_linear(n) for n in parts):
        return None
    pairs = [_reference_and_latent(ckpt, n) for n in parts]
    ref = np.concatenate([r for r, _ in pairs])
    got = _effective(np.concatenate([latent for _, latent in pairs]))
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def _reference_and_latent(ckpt: Checkpoint, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The weight the reference runs (float64), and the latent weight Nanotron holds for it (float32):
    the master's floats, or for stored codes t with magnitude m, t x m / p (p: non-zero fraction),
    which is what ``--to nanotron --allow-approximate`` writes so that one unfused matrix quantizes
    back exactly."""
    value = ckpt.tensors[name].load()
    if not isinstance(value, TernaryWeight):
        w = value.float32()
        return _effective(w), w
    ref = value.dequantize("F32").float32()
    p = float(np.count_nonzero(value.codes)) / max(value.codes.size, 1)
    return ref.astype(np.float64), ref / np.float32(p) if p > 0 else ref
