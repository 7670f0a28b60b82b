"""What a checkpoint is, as far as the consumer rules of :mod:`.targets` need it, and the rule checks.

Each check takes a :class:`Subject` and returns a :class:`Finding`. A rule about GGUF files applies
to a GGUF SRC as stored; for any other SRC it applies to what ``convert --to gguf`` would write (the
GGUF architecture the model's family record names, rows that TQ or I2_S must hold), so the same
command answers "can I ship this to llama.cpp?" before converting. Facts about the model come from
its family record, facts about Nanotron's codebases from :mod:`bitconvert.formats.nanotron.flavors`;
what is written here is what the other consumers do. numpy only.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass


from ..formats.gguf import archs, i2s_layouts
from ..formats.gguf.parser import GGUFFile
from ..formats.gguf.types import QK_K
from ..model.checkpoint import Checkpoint, Kind
from ..model.config import ModelConfig
from ..model.families import Family
from ..ternary.linear_class import LinearClass

#: values per row each ternary GGUF type (TQ1_0, TQ2_0) needs, as a multiple: ggml's QK_K
TQ_ROWS = QK_K
#: the GGUF architecture transformers' GGUF loader reads (dequantizing every tensor to floats)
TRANSFORMERS_GGUF_ARCHITECTURE = "llama"
#: where transformers' BitNet model keeps its sub-norms (modeling_bitnet.py); sub-norms anywhere
#: else are dropped by transformers and exist only in a repository's remote code
TRANSFORMERS_SUB_NORMS = {"attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm"}
#: the activation bitnet.cpp (llama.cpp submodule 390c3077 or later) replaces by SiLU
BITNET_CPP_REPLACED_ACTIVATION = "relu2"
#: what bitnet.cpp's first release (c82b5e6, llama.cpp 406a5036) loads: the GGUF architectures, and
#: the tensor types of the files bitconvert writes (each run in its prebuilt build)
BITNET_CPP_ARCHITECTURES = (archs.ARCH_BITNET, archs.ARCH_LLAMA)
BITNET_CPP_TYPES = ("I2_S", "TQ1_0", "TQ2_0", "F16", "BF16", "F32", "Q8_0")
BITNET_CPP_TL = ("TL1", "TL2")


@dataclass
class Finding:
    passed: bool
    detail: str
    figure: float | None = None
    threshold: float | None = None
    tensor: str | None = None


@dataclass
class Subject:
    """The checkpoint under test, and its parsed GGUF header when it is a GGUF file."""

    ckpt: Checkpoint
    gguf: GGUFFile | None

    @property
    def cfg(self) -> ModelConfig:
        return self.ckpt.config

    def gguf_arch(self, gguf_type: str) -> str:
        """``general.architecture`` of SRC, or the one ``convert --to gguf --gguf-type T`` writes."""
        if self.ckpt.facts.gguf is not None:
            return self.ckpt.facts.gguf.architecture
        return archs.gguf_architecture(self.cfg.family, gguf_type)

    def where(self, gguf_type: str) -> str:
        return "this GGUF" if self.gguf is not None else f"`convert --to gguf --gguf-type {gguf_type}` of it"

    def tensor_types(self, type_name: str) -> list[str]:
        """The GGUF tensors of type ``type_name`` (``"I2_S"``), by GGUF name."""
        return [t.name for t in self.gguf.tensors.values() if t.type_name == type_name] if self.gguf else []


def gather(ckpt: Checkpoint) -> Subject:
    return Subject(ckpt, GGUFFile(ckpt.path) if ckpt.facts.gguf is not None else None)


def _narrow_rows(f: Subject, multiple: int) -> list[str]:
    return [n for n in f.cfg.quantized_linear_names() if f.ckpt.tensors[n].shape[1] % multiple]


def foreign_sub_norms(family: Family) -> list[str]:
    """The family's sub-norm paths transformers' BitNet model does not have (its weights are dropped there)."""
    return [n.path for n in family.norms if n.role in TRANSFORMERS_SUB_NORMS and n.path != TRANSFORMERS_SUB_NORMS[n.role]]


def family_name(family: Family) -> str:
    """How people call the family: the first word of its title (``1bitLLM``)."""
    return family.title.split()[0]


# --- transformers -----------------------------------------------------------------------------


def transformers_format(f: Subject) -> Finding:
    fmt = f.ckpt.format
    if fmt.startswith("hf-"):
        return Finding(True, f"{fmt}: transformers loads it (safetensors + config.json)")
    if f.ckpt.facts.gguf is not None and f.gguf_arch("tq2_0") == TRANSFORMERS_GGUF_ARCHITECTURE:
        return Finding(False, "transformers reads a `llama` GGUF by dequantizing every tensor to floats and runs a "
                              "plain float Llama: no BitNet weight or activation quantization")
    if f.ckpt.facts.gguf is not None:
        return Finding(False, f"transformers has no GGUF loader for architecture {f.gguf_arch('tq2_0')!r}")
    return Finding(False, f"transformers does not read {fmt} checkpoints; convert with --to hf-packed")


def transformers_layout(f: Subject) -> Finding:
    family = f.cfg.family
    foreign = foreign_sub_norms(family)
    if not foreign:
        return Finding(True, f"{family.hf_architecture}: a class transformers has")
    names = " / ".join(path.rsplit(".", 1)[-1] for path in foreign)
    return Finding(False, f"{family_name(family)} layout: transformers has no class with {names}; model_type "
                          f"{f.cfg.raw.get('model_type', family.model_type)!r} builds a model without those sub-norms "
                          "and drops their weights (only the repository's own remote code runs it as trained)")


def transformers_scale_meaning(f: Subject) -> Finding:
    if not f.ckpt.format.startswith("hf-"):
        return Finding(True, "no stored weight_scale: transformers quantizes the floats itself (absmean, online)")
    scales = {}
    for n, e in f.ckpt.tensors.items():
        if e.kind is Kind.TERNARY and (scale := e.stored().scale) is not None:
            scales[n] = scale
    if not scales:
        return Finding(True, "no stored weight_scale: transformers quantizes the floats itself (absmean, online)")
    q = f.cfg.quantization
    if q is None:
        return Finding(False, "packed weights but no quantization_config: transformers builds plain Linear layers "
                              "and never reads weight_scale", tensor=next(iter(scales)))
    # the weight magnitude mean|W| each layer runs with, as transformers reads the stored scale
    median = statistics.median(s.multiplier for s in scales.values())
    flipped = 1.0 / median if median > 0 else float("inf")
    ok = median <= 1.0 or flipped > 1.0
    how = "divides by" if q.linear_class is LinearClass.BITLINEAR else "multiplies by"
    detail = (f"linear_class {q.linear_class.value}: transformers {how} weight_scale; median weight magnitude "
              f"mean|W| {median:.4g}")
    if not ok:
        detail += (f", implausible for a trained layer, while the other class gives {flipped:.4g}: the scales look "
                   "written for the other linear_class")
    return Finding(ok, detail, median, 1.0)


# --- llama.cpp --------------------------------------------------------------------------------


def _llamacpp_graph(arch: str) -> archs.Graph | None:
    """llama.cpp's graph for GGUF architecture ``arch``, or None where llama.cpp has none."""
    graph = archs.graph(arch)
    return graph if graph.consumer == "llama.cpp" else None


def llamacpp_architecture(f: Subject) -> Finding:
    arch = f.gguf_arch("tq2_0")
    ok = _llamacpp_graph(arch) is not None
    detail = f"{f.where('tq2_0')}: architecture {arch!r}"
    return Finding(ok, detail + ("" if ok else ", which llama.cpp does not know (bitnet.cpp's name): it refuses the file"))


def llamacpp_tensor_types(f: Subject) -> Finding:
    if f.gguf is not None:
        unknown = f.tensor_types("I2_S")
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


def llamacpp_known_tensors(f: Subject) -> Finding:
    """Whether every per-layer tensor of the model is one llama.cpp's loader for the architecture knows."""
    arch = f.gguf_arch("tq2_0")
    unknown = archs.tensors_unknown_to(f.cfg.family, arch)
    if unknown:
        return Finding(False, f"{f.where('tq2_0')} holds {', '.join(unknown)} per layer, which llama.cpp's {arch!r} "
                              "loader does not know: it refuses the file", float(len(unknown)), 0.0,
                       f"{f.cfg.layer_prefix(0)}{f.cfg.family.norm(unknown[0]).path}.weight"
                       if f.cfg.family.norm(unknown[0]) else None)  # fmt: skip
    return Finding(True, f"every per-layer tensor is one llama.cpp's {arch!r} loader knows")


def llamacpp_ffn_activation(f: Subject) -> Finding:
    arch, act = f.gguf_arch("tq2_0"), f.cfg.hidden_act
    graph = _llamacpp_graph(arch)
    if graph is not None and graph.activation != act:
        words = archs.ACTIVATION_WORDS.get(graph.activation, graph.activation)
        return Finding(False, f"{f.where('tq2_0')} is architecture {arch!r}, whose FFN llama.cpp runs with {words}; "
                              f"this model's activation is {act!r}")
    return Finding(True, f"architecture {arch!r}, activation {act!r}")


def llamacpp_scale_tensors(f: Subject) -> Finding:
    """Always passes for the build checked (it multiplies ``.scale`` tensors in for every
    architecture); says where the scale lives, and what older builds did."""
    arch = f.gguf_arch("tq2_0")
    scales = [t for t in f.gguf.tensors if t.endswith(".scale")] if f.gguf is not None else []
    if scales:
        return Finding(True, f"{len(scales)} F32 .scale tensors, multiplied in by llama.cpp's generic per-tensor "
                             f"scale pass in architecture {arch!r} too (builds before it: 'bitnet' only)",
                       float(len(scales)), tensor=scales[0])
    if arch == archs.ARCH_LLAMA:
        return Finding(True, "architecture 'llama' without .scale tensors: each tensor scale is in the fp16 block d")
    return Finding(True, f"architecture {arch!r}: no .scale tensors")


# --- bitnet.cpp ---------------------------------------------------------------------------------


def bitnetcpp_ffn_activation(f: Subject) -> Finding:
    act = f.cfg.hidden_act
    if act == BITNET_CPP_REPLACED_ACTIVATION:
        return Finding(False, "relu² model (2B-4T): bitnet.cpp's first release has no relu² graph (its `bitnet` "
                              "architecture runs SiLU), and builds from its llama.cpp submodule at 390c3077 on run "
                              "the FFN of `bitnet-b1.58` with SiLU")
    return Finding(True, f"activation {act!r}")


def bitnetcpp_architecture(f: Subject) -> Finding:
    arch = f.gguf_arch("i2_s")
    detail = f"{f.where('i2_s')}: architecture {arch!r}"
    if arch in BITNET_CPP_ARCHITECTURES:
        return Finding(True, detail)
    later = " (builds from llama.cpp 390c3077 on load it)" if archs.ALIASES.get(arch, arch) == archs.ARCH_BITNET_B158 else ""
    return Finding(False, f"{detail}, which bitnet.cpp's first release refuses: unknown model architecture{later}")


def bitnetcpp_tensor_types(f: Subject) -> Finding:
    if f.gguf is None:
        return Finding(True, f"`convert --to gguf` writes types it loads ({', '.join(BITNET_CPP_TYPES)})")
    found = {t.type_name for t in f.gguf.tensors.values()}
    tl = sorted(found & set(BITNET_CPP_TL))
    if tl:
        names = f.tensor_types(tl[0])
        return Finding(False, f"{len(names)} {tl[0]} tensors: only a bitnet.cpp built with its lookup-table kernels "
                              f"for these weight shapes (cmake -DBITNET_X86_TL2=ON / -DBITNET_ARM_TL1=ON after "
                              "utils/codegen_tl*.py) reads them; the default build has none",
                       float(len(names)), 0.0, names[0])  # fmt: skip
    other = sorted(found - set(BITNET_CPP_TYPES))
    if other:
        return Finding(False, f"tensor types {', '.join(other)}, which bitnet.cpp's first release does not load")
    return Finding(True, f"every tensor type is one it loads ({', '.join(sorted(found))})")


def bitnetcpp_rows(layout: str) -> Callable[[Subject], Finding]:
    """Rows a bitnet.cpp build of ``layout`` can hold, for what ``convert --to gguf --gguf-type i2_s`` writes."""

    def check(f: Subject) -> Finding:
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


def bitnetcpp_i2_s_layout(layout: str) -> Callable[[Subject], Finding]:
    """The I2_S byte layout of SRC's tensors against the one a ``layout`` build reads."""

    def check(f: Subject) -> Finding:
        if f.gguf is None:
            return Finding(True, f"write it with `--gguf-type i2_s --i2s-layout {layout}`")
        i2s = f.tensor_types("I2_S")
        if not i2s:
            return Finding(True, "no I2_S tensors")
        facts = f.ckpt.facts.gguf
        stored = facts.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
        if facts.i2s_layout_recorded and stored == layout:
            return Finding(True, f"{len(i2s)} I2_S tensors in the {layout} layout, as recorded")
        # a layout the file does not record is only assumed: no build can be promised the right codes
        shown = stored if facts.i2s_layout_recorded else f"{stored} (assumed: not recorded)"
        return Finding(False, f"{len(i2s)} I2_S tensors in the {shown} layout; a {layout} build reads other codes "
                              "from the same bytes", float(len(i2s)), 0.0, i2s[0])

    return check
