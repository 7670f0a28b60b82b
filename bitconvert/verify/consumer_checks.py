"""What a checkpoint is, as far as the consumer rules of :mod:`.targets` need it, and the rule checks.

Each check takes :class:`Facts` and returns a :class:`Finding`. A rule about GGUF files applies to
a GGUF SRC as stored; for any other SRC it applies to what ``convert --to gguf`` would write (the
GGUF architecture bitconvert chooses, rows that TQ or I2_S must hold), so the same command answers
"can I ship this to llama.cpp?" before converting.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model.checkpoint import Checkpoint
from ..model.config import Architecture, ModelConfig
from ..formats.gguf import codecs, i2s_layouts, metadata, names, types
from ..formats.gguf.parser import GGUFFile
from ..ternary import TernaryWeight

#: rows (in_features) each ternary GGUF type needs, as a multiple
TQ_ROWS = codecs.QK_K
#: Nanotron's RotaryEmbedding default base, the only one its BitNet config can express
NANOTRON_ROPE_BASE = 10000.0
#: fused Nanotron parameters and the HF projections each concatenates
FUSED = {"qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip


@dataclass
class Finding:
    passed: bool
    detail: str
    figure: float | None = None
    threshold: float | None = None
    tensor: str | None = None


@dataclass
class Facts:
    ckpt: Checkpoint
    #: the parsed file when SRC is a GGUF
    gguf: GGUFFile | None

    @property
    def cfg(self) -> ModelConfig:
        return self.ckpt.config

    def gguf_arch(self, gguf_type: str) -> str:
        """``general.architecture`` of SRC, or the one ``convert --to gguf --gguf-type T`` writes."""
        if self.gguf is not None:
            return str(self.gguf.get("general.architecture"))
        return metadata.gguf_architecture(self.cfg.architecture, gguf_type)

    def where(self, gguf_type: str) -> str:
        return "this GGUF" if self.gguf is not None else f"`convert --to gguf --gguf-type {gguf_type}` of it"


def gather(ckpt: Checkpoint) -> Facts:
    gguf = GGUFFile(ckpt.path) if ckpt.format == "gguf" else None
    return Facts(ckpt, gguf)


def _narrow_rows(f: Facts, multiple: int) -> list[str]:
    return [n for n in f.cfg.quantized_linear_names() if f.ckpt.tensors[n].shape[1] % multiple]


# --- transformers -----------------------------------------------------------------------------


def transformers_format(f: Facts) -> Finding:
    fmt = f.ckpt.format
    if fmt.startswith("hf-"):
        return Finding(True, f"{fmt}: transformers loads it (safetensors + config.json)")
    if fmt == "gguf" and f.gguf_arch("tq2_0") == metadata.ARCH_LLAMA:
        return Finding(False, "transformers reads a `llama` GGUF by dequantizing every tensor to floats and runs a "
                              "plain float Llama: no BitNet weight or activation quantization")
    if fmt == "gguf":
        return Finding(False, f"transformers has no GGUF loader for architecture {f.gguf_arch('tq2_0')!r}")
    return Finding(False, f"transformers does not read {fmt} checkpoints; convert with --to hf-packed")


def transformers_layout(f: Facts) -> Finding:
    if f.cfg.architecture is not Architecture.BITNET_1BITLLM:
        return Finding(True, f"{f.cfg.spec.hf_architecture}: a class transformers has")
    return Finding(False, "1bitLLM layout: transformers has no class with inner_attn_ln / ffn_layernorm; model_type "
                          f"{f.cfg.raw.get('model_type', 'llama')!r} builds a model without those sub-norms and drops "
                          "their weights (only the repository's own remote code runs it as trained)")


def transformers_scale_meaning(f: Facts) -> Finding:
    ternary = [n for n, e in f.ckpt.tensors.items() if e.ternary and e.load_scale is not None]
    if not ternary or not f.ckpt.format.startswith("hf-"):
        return Finding(True, "no stored weight_scale: transformers quantizes the floats itself (absmean, online)")
    q = f.cfg.quantization
    if q is None:
        return Finding(False, "packed weights but no quantization_config: transformers builds plain Linear layers "
                              "and never reads weight_scale", tensor=ternary[0])
    # the weight magnitude mean|W| each layer runs with, as transformers reads the stored scale
    mags = [f.ckpt.tensors[n].load_scale().multiplier for n in ternary]
    median = statistics.median(mags)
    flipped = 1.0 / median if median > 0 else float("inf")
    ok = median <= 1.0 or flipped > 1.0
    how = "divides by" if q.linear_class.value == "bitlinear" else "multiplies by"
    detail = (f"linear_class {q.linear_class.value}: transformers {how} weight_scale; median weight magnitude "
              f"mean|W| {median:.4g}")
    if not ok:
        detail += (f", implausible for a trained layer, while the other class gives {flipped:.4g}: the scales look "
                   "written for the other linear_class")
    return Finding(ok, detail, median, 1.0)


# --- llama.cpp --------------------------------------------------------------------------------


def llamacpp_architecture(f: Facts) -> Finding:
    arch = f.gguf_arch("tq2_0")
    ok = arch in (metadata.ARCH_BITNET, metadata.ARCH_LLAMA)
    detail = f"{f.where('tq2_0')}: architecture {arch!r}"
    return Finding(ok, detail + ("" if ok else ", which llama.cpp does not know (bitnet.cpp's name): it refuses the file"))


def llamacpp_tensor_types(f: Facts) -> Finding:
    if f.gguf is not None:
        unknown = [t.name for t in f.gguf.tensors.values() if t.type == types.I2_S]
        if unknown:
            return Finding(False, f"{len(unknown)} I2_S tensors: a bitnet.cpp type (id 36) llama.cpp does not have",
                           float(len(unknown)), 0.0, unknown[0])
        return Finding(True, "every tensor type is one llama.cpp has")
    narrow = _narrow_rows(f, TQ_ROWS)
    if narrow:
        cols = f.ckpt.tensors[narrow[0]].shape[1]
        return Finding(False, f"{len(narrow)} ternary weights have rows of {cols} values, not a multiple of {TQ_ROWS}: "
                              "TQ1_0/TQ2_0 cannot hold them (--allow-fallback writes them as F16)",
                       float(len(narrow)), 0.0, narrow[0])
    return Finding(True, f"every ternary weight's rows are a multiple of {TQ_ROWS} (TQ1_0/TQ2_0)")


def llamacpp_ffn_activation(f: Facts) -> Finding:
    arch, act = f.gguf_arch("tq2_0"), f.cfg.hidden_act
    if arch == metadata.ARCH_BITNET and act != "silu":
        return Finding(False, f"{f.where('tq2_0')} is architecture 'bitnet', whose FFN llama.cpp runs with SiLU; this "
                              f"model's activation is {act!r}")
    return Finding(True, f"architecture {arch!r}, activation {act!r}")


def llamacpp_scale_tensors(f: Facts) -> Finding:
    """Always passes for the build checked (it multiplies ``.scale`` tensors in for every
    architecture); says where the scale lives, and what older builds did."""
    arch = f.gguf_arch("tq2_0")
    scales = [t for t in f.gguf.tensors if t.endswith(names.SCALE_SUFFIX)] if f.gguf is not None else []
    if scales:
        return Finding(True, f"{len(scales)} F32 .scale tensors, multiplied in by llama.cpp's generic per-tensor "
                             f"scale pass in architecture {arch!r} too (builds before it: 'bitnet' only)",
                       float(len(scales)), tensor=scales[0])
    if arch == metadata.ARCH_LLAMA:
        return Finding(True, "architecture 'llama' without .scale tensors: each tensor scale is in the fp16 block d")
    return Finding(True, f"architecture {arch!r}: no .scale tensors")


# --- bitnet.cpp ---------------------------------------------------------------------------------


def bitnetcpp_ffn_activation(f: Facts) -> Finding:
    act = f.cfg.hidden_act
    if act == "relu2":
        return Finding(False, "relu² model (2B-4T): bitnet.cpp built from its llama.cpp submodule at 390c3077 or "
                              "later runs the FFN with SiLU")
    return Finding(True, f"activation {act!r}")


def bitnetcpp_rows(layout: str) -> Callable[[Facts], Finding]:
    """Rows a bitnet.cpp build of ``layout`` can hold, for what ``convert --to gguf --gguf-type i2_s`` writes."""

    def check(f: Facts) -> Finding:
        if f.gguf is not None:
            return Finding(True, "stored as it is (the layout rule checks the I2_S tensors)")
        bad = [(n, i2s_layouts.layout_problem(layout, tuple(f.ckpt.tensors[n].shape)))
               for n in f.cfg.quantized_linear_names()]
        bad = [(n, why) for n, why in bad if why]
        if bad:
            return Finding(False, f"{len(bad)} ternary weights cannot be I2_S in the {layout} layout: {bad[0][1]}",
                           float(len(bad)), 0.0, bad[0][0])
        return Finding(True, f"every ternary weight fits the {layout} I2_S layout")

    return check


def bitnetcpp_i2_s_layout(layout: str) -> Callable[[Facts], Finding]:
    """The I2_S byte layout of SRC's tensors against the one a ``layout`` build reads."""

    def check(f: Facts) -> Finding:
        if f.gguf is None:
            return Finding(True, f"write it with `--gguf-type i2_s --i2s-layout {layout}`")
        i2s = [t.name for t in f.gguf.tensors.values() if t.type == types.I2_S]
        if not i2s:
            return Finding(True, "no I2_S tensors")
        stored = str(f.ckpt.info.get("i2s_layout", i2s_layouts.DEFAULT_LAYOUT))
        if stored == layout:
            return Finding(True, f"{len(i2s)} I2_S tensors in the {layout} layout, as recorded")
        return Finding(False, f"{len(i2s)} I2_S tensors in the {stored} layout; a {layout} build reads other "
                              "codes from the same bytes", float(len(i2s)), 0.0, i2s[0])

    return check


# --- Nanotron -----------------------------------------------------------------------------------


def nanotron_sub_norms(f: Facts) -> Finding:
    spec = f.cfg.spec
    subs = [s for s in (spec.attn_sub_norm, spec.ffn_sub_norm) if s]
    if subs:
        return Finding(False, f"the model has sub-norms ({', '.join(subs)}); no Nanotron model applies them: it "
                              "computes the network without them", tensor=f"model.layers.0.{subs[0]}.weight")
    return Finding(True, "no sub-norms")


def nanotron_pr180_norms(f: Facts) -> Finding:
    return Finding(False, "PR #180's head has no input_layernorm / post_attention_layernorm and normalizes every "
                          "BitLinear's input without a weight: the model's decoder norm weights are not applied")


def nanotron_rope_theta(f: Facts) -> Finding:
    theta = f.cfg.rope_theta
    ok = theta == NANOTRON_ROPE_BASE
    detail = f"rope_theta {theta:g}" + ("" if ok else f": the BitNet model's RoPE base is {NANOTRON_ROPE_BASE:g}")
    return Finding(ok, detail, theta, NANOTRON_ROPE_BASE)


def nanotron_unquantized(f: Facts) -> Finding:
    return Finding(False, "upstream main has no BitNet layers: it runs the latent weights as plain floats, "
                          "unquantized, and activations in full precision")


def _effective(w: torch.Tensor) -> torch.Tensor:
    """absmean ternary weight as Nanotron's ``weight_quant`` and transformers' online mode compute it."""
    s = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1) / s


def nanotron_fused_scales(f: Facts) -> Finding:
    """Nanotron quantizes the fused qkv_proj / gate_up_proj with one absmean: how far that weight is
    from the reference's per-projection weights (TP 1), as the worst relative Frobenius error."""
    worst, where = 0.0, None
    for i in range(f.cfg.num_hidden_layers):
        for fused in FUSED:
            err = fused_error(f.ckpt, i, fused)
            if err is not None and err > worst:
                worst, where = err, f"model.layers.{i}.{FUSED[fused][0]}.weight"
    ok = worst == 0.0
    detail = "q/k/v (and gate/up) are quantized with one absmean per fused weight"
    detail += "" if ok else f"; the weights differ from the reference's per-projection ones by up to {worst:.3g}"
    return Finding(ok, detail, worst, 0.0, where)


def fused_error(ckpt: Checkpoint, layer: int, fused: str) -> float | None:
    """Relative Frobenius difference between Nanotron's quantization of the fused weight ``fused``
    (``qkv_proj`` or ``gate_up_proj``) of ``layer`` and the reference's per-projection weights."""
    hf = [f"model.layers.{layer}.{p}.weight" for p in FUSED[fused]]
    if not all(ckpt.is_quantized_linear(n) for n in hf):
        return None
    pairs = [_reference_and_latent(ckpt, n) for n in hf]
    ref = torch.cat([r for r, _ in pairs])
    got = _effective(torch.cat([latent for _, latent in pairs]))
    return float((got - ref).norm() / ref.norm().clamp(min=1e-30))


def _reference_and_latent(ckpt: Checkpoint, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight the reference runs, and the latent weight Nanotron holds for it: the master's
    floats, or for stored codes t with magnitude m, t x m / p (p: non-zero fraction), which is
    what ``--to nanotron --allow-approximate`` writes so that one unfused matrix quantizes back exactly."""
    value = ckpt.tensors[name].load()
    if not isinstance(value, TernaryWeight):
        w = value.float()
        return _effective(w), w
    ref = value.dequantize(torch.float32)
    p = float(value.codes.ne(0).float().mean())
    return ref, ref / p if p > 0 else ref
