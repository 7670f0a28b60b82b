"""The ``gguf`` writer: a :class:`Checkpoint` laid out as one GGUF file, tensor by tensor.

Three stages: **plan** (each tensor's GGUF name, type and shape, and how its scale is kept),
**metadata** (hyperparameters, tokenizer, provenance, exact scale records), **stream** (each tensor
loaded and encoded through the type table in ``types.py`` by ``production.py``, on a worker that runs
ahead of the writes, and written in plan order).

Scales stay exact. TQ types in the ``bitnet`` architecture store codes with block ``d = 1`` plus an
F32 ``[1]`` tensor ``blk.N.<name>.scale`` that llama.cpp multiplies into the matmul output. The
``llama`` architecture loads no such tensor, so there the scale is folded into every block's fp16
``d`` (rounded; reported). I2_S keeps one fp32 scale after the packed codes, as bitnet.cpp does, in
the byte layout of ``--i2s-layout`` (recorded as ``bitconvert.i2s_layout``). ``--recipe`` quantizes a
master as llama.cpp's converter (fp16 ``d`` per block, no ``.scale``) or bitnet.cpp's does.
Each stored scale is also recorded bit for bit under ``bitconvert.ternary_scales`` so converting
back restores it exactly, whatever its dtype and convention.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, UsageError
from ...io.pipeline import ahead_budget, produced_ahead
from ...io.provenance import PROVENANCE_KEY, provenance_text
from ...model.checkpoint import Checkpoint, Kind
from ...model.config import ModelConfig
from ...model.families import EMBEDDING, LM_HEAD
from ...ternary.recipes import RECIPES, Recipe, check_recipe
from ...ternary.records import encode_record
from .. import Progress, WriteReport, register_writer
from ..hf.common import ordered_names
from . import archs, i2s_layouts, metadata, names, production, tokenizer, types
from .options import GGUFOptions
from .plan import Plan, TensorPlan
from .stream_writer import KV, GGUFStreamWriter, PlannedGGUFTensor, kv_str
from .types import GGMLType

NAME = "gguf"
EMBEDDINGS = (EMBEDDING, LM_HEAD)
SCALE_MODES = {
    "blocks": "llama.cpp's: fp16 d = max|x| per 256-value block (the magnitude rounded to fp16)",
    "tensor": "exact: codes with d = 1 and an F32 .scale tensor per weight",
    "folded": "folded into each block's fp16 d",
    "in-data": "exact: fp32 after the packed codes",
    "dequantized": "dequantized: codes x mean|W| per value",
}


def scale_mode(wtype: GGMLType, arch: str, recipe: Recipe = Recipe.TRANSFORMERS) -> str:
    """Where a quantized weight's scale goes for this type and architecture (see SCALE_MODES): the
    recipe's own place where it has one, else the data's (I2_S), else a ``.scale`` tensor where the
    architecture's graph multiplies one in, else folded into the blocks' ``d``."""
    if RECIPES[recipe].gguf_scale_mode is not None:
        return RECIPES[recipe].gguf_scale_mode
    if wtype.kind != "ternary":
        return "dequantized"
    if wtype.flat:
        return "in-data"
    return "tensor" if archs.graph(arch).scale_tensors else "folded"


class GGUFWriter:
    name = NAME
    Options = GGUFOptions
    #: the compiled loops quantizing a bf16 master into TQ1_0/TQ2_0/I2_S runs (see convert: compiled ahead)
    kernels = ("block_abs_sums", "codes_flat", "pack_code_planes")

    def write(self, ckpt: Checkpoint, out: Path, options: GGUFOptions, progress: Progress) -> WriteReport:
        report = WriteReport(NAME)
        plan = plan_tensors(ckpt, options)
        _check_layout(ckpt.config, plan.arch, report)
        md = _metadata(ckpt, plan, options, report)
        how, folded_err = _stream(ckpt, plan, md, out, progress)
        report.tensors = len(plan.flat())
        report.bytes_written = out.stat().st_size
        report.ternary_sources = dict(how)
        report.details.update(
            gguf_type=options.gguf_type, architecture=plan.arch, token_embd=embed_type(ckpt, options),
            scale=SCALE_MODES[plan.mode], recipe=plan.recipe.value,
        )  # fmt: skip
        if plan.wtype.id == types.I2_S:
            report.details["i2s_layout"] = plan.i2s_layout
        _report_losses(plan, options, how, folded_err, report)
        return report


# --- stage 1: plan --------------------------------------------------------------------------------


def plan_tensors(ckpt: Checkpoint, options: GGUFOptions) -> Plan:
    cfg = ckpt.config
    wtype = types.BY_OPTION[options.gguf_type]
    _check_options(ckpt, options, wtype)
    arch = archs.gguf_architecture(cfg.family, options.gguf_type)
    layout = options.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
    plan = Plan(arch, wtype, scale_mode(wtype, arch, options.recipe), options.recipe, layout)
    plan.embed_loss = _embed_loss(ckpt, options)
    etype = types.BY_OPTION[embed_type(ckpt, options)]
    for hf in ordered_names(cfg, ckpt.tensors):
        e = ckpt.tensors[hf]
        gname = names.to_gguf(hf, cfg)
        if gname is None:
            raise CheckpointError(e.source, "no GGUF name for this tensor", hf)
        heads = names.permuted_heads(hf, cfg)
        if ckpt.is_quantized_linear(hf):
            plan.tensors.append(_plan_quantized(plan, hf, gname, e.shape, e.source, options.allow_fallback))
            plan.tensors[-1].heads = heads
            continue
        if hf in EMBEDDINGS:
            dense = etype
            if not etype.fits(e.shape):
                problem = f"rows of {e.shape[-1]} values cannot be stored as {etype.name} (blocks of {etype.block})"
                raise CheckpointError(e.source, problem, hf)
        else:  # norms F32; a linear left unquantized (modules_to_not_convert) F16, as llama.cpp does
            dense = types.TYPES[types.F32 if len(e.shape) == 1 else types.F16]
        plan.tensors.append(TensorPlan(hf, PlannedGGUFTensor(gname, dense.id, e.shape), "dense", heads=heads))
    return plan


#: source float dtype -> the --embed-type that holds it exactly
_EXACT_EMBED = {"F16": "f16", "BF16": "bf16", "F32": "f32"}
#: embed types that hold every value of a source dtype (widening), beside the source's own
_WIDER = {"F16": ("f32",), "BF16": ("f32",)}


def embed_type(ckpt: Checkpoint, options: GGUFOptions) -> str:
    """The type token_embd is written in: the one asked for, else the source's own float type."""
    if options.embed_type is not None:
        return options.embed_type
    e = ckpt.tensors.get(EMBEDDINGS[0])
    return _EXACT_EMBED.get(e.dtype_name, "f16") if e is not None and e.kind is Kind.DENSE else "f16"


def _embed_loss(ckpt: Checkpoint, options: GGUFOptions) -> str | None:
    """A warning when the embedding type asked for rounds the source's float values."""
    e = ckpt.tensors.get(EMBEDDINGS[0])
    chosen = embed_type(ckpt, options)
    if e is None or e.kind is not Kind.DENSE or e.dtype_name not in _EXACT_EMBED:
        return None
    if chosen == _EXACT_EMBED[e.dtype_name] or chosen in _WIDER.get(e.dtype_name, ()):
        return None
    return (f"token_embd: the source's {e.dtype_name} values are stored as {chosen.upper()} (--embed-type {chosen}), "
            f"which rounds them; the default keeps {_EXACT_EMBED[e.dtype_name]}")


def _check_options(ckpt: Checkpoint, options: GGUFOptions, wtype: GGMLType) -> None:
    """Refuse an I2_S layout where it cannot apply, and a recipe where it cannot do what it names."""
    if options.i2s_layout is not None and wtype.id != types.I2_S:
        raise UsageError(f"--i2s-layout applies to --gguf-type i2_s only, not {options.gguf_type}")
    if wtype.id == types.I2_S and not options.allow_fallback:
        layout = options.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
        for name, e in ckpt.tensors.items():
            problem = ckpt.is_quantized_linear(name) and i2s_layouts.layout_problem(layout, tuple(e.shape))
            if problem:
                raise CheckpointError(e.source, problem, name)
    chosen = {"gguf_type": options.gguf_type}
    check_recipe(options.recipe, NAME, chosen, ckpt.first_stored_ternary(), f"{ckpt.path} ({ckpt.format})")


def _plan_quantized(plan: Plan, hf: str, gname: str, shape: tuple, source: str, allow_fallback: bool) -> TensorPlan:
    wtype = plan.wtype
    scale = PlannedGGUFTensor(names.scale_name(gname), types.F32, (1,))
    if shape[-1] % wtype.block == 0:
        return TensorPlan(
            hf, PlannedGGUFTensor(gname, wtype.id, shape), "ternary", scale if plan.mode == "tensor" else None
        )
    if not allow_fallback:
        problem = (
            f"rows of {shape[-1]} values are not a multiple of {wtype.block}, which {wtype.name} needs "
            "(pass --allow-fallback to write such tensors as F16)"
        )
        raise CheckpointError(source, problem, hf)
    plan.fallbacks.append(hf)
    # upstream llama.cpp's bitnet graph multiplies .scale in (checked); bitnet.cpp's is unverified
    keep_scale = archs.graph(plan.arch).scale_tensors and wtype.kind == "ternary" and not wtype.flat
    return TensorPlan(hf, PlannedGGUFTensor(gname, types.F16, shape), "fallback", scale if keep_scale else None)


# --- stage 2: metadata ----------------------------------------------------------------------------


def _metadata(ckpt: Checkpoint, plan: Plan, options: GGUFOptions, report: WriteReport) -> dict[str, KV]:
    cfg = ckpt.config
    md: dict[str, KV] = {}
    name, source_url, license = metadata.origin(ckpt.origin, ckpt.path)
    md.update(metadata.general(name, plan.arch, plan.wtype.file_type, source_url, license))
    md.update(metadata.hyperparameters(cfg, plan.arch))
    if not options.no_tokenizer:
        md.update(_tokenizer(ckpt, report))
    records = {}
    for p in plan.tensors:
        scale = _exact_scale(ckpt, p)
        if scale is not None:
            records[p.hf] = encode_record(scale)
    md.update(metadata.bitconvert_keys(cfg, ckpt.format, plan.mode, records))
    if plan.wtype.id == types.I2_S:
        md[metadata.KEY_I2S_LAYOUT] = kv_str(plan.i2s_layout)
    if ckpt.origin.provenance:
        md[PROVENANCE_KEY] = kv_str(provenance_text(ckpt.origin.provenance))
    return md


def _exact_scale(ckpt: Checkpoint, p: TensorPlan):
    """The exact scale a quantized weight's source holds where it is known before its codes are: a
    stored ternary weight's (read without its codes), a master's recorded one."""
    if p.role == "dense":
        return None
    e = ckpt.tensors[p.hf]
    if e.kind is Kind.TERNARY:
        return e.stored().scale
    return e.record.scale if e.record is not None else None


def _tokenizer(ckpt: Checkpoint, report: WriteReport) -> dict[str, KV]:
    """A GGUF source's tokenizer keys as they were; else keys built from tokenizer.json."""
    carried = ckpt.facts.gguf.tokenizer if ckpt.facts.gguf is not None else None
    if carried:
        return carried
    cfg = ckpt.config
    tmeta = tokenizer.from_side_files(ckpt.side_files, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
    report.warnings += tmeta.warnings
    return tmeta.kv


# --- stage 3: stream ------------------------------------------------------------------------------


def _stream(ckpt: Checkpoint, plan: Plan, md: dict[str, KV], out: Path, progress: Progress) -> tuple[Counter, float]:
    """Every tensor written in plan order while production (load, quantize, encode) runs ahead on a
    worker; (how each weight was obtained, the largest relative rounding of a scale folded into fp16 d)."""
    how: Counter = Counter()
    folded_err = 0.0
    total = len(plan.tensors)
    work = production.pieces(plan)
    count = Counter(piece.index for piece in work)
    made = produced_ahead(work, production.Producer(ckpt, plan), ahead_budget(work))
    try:
        with GGUFStreamWriter(out, md, plan.flat()) as w:
            for i, p in enumerate(plan.tensors):
                progress(i, total, p.hf)
                if p.role == "dense":
                    w.write_parts(p.tensor.name, (next(made).data for _ in range(count[i])))
                    continue
                m = next(made)
                how[m.source] += 1
                w.write(p.tensor.name, m.data)
                mag = m.magnitude
                if plan.mode == "folded" and p.role == "ternary":
                    folded = float(production.folded_d(mag))
                    folded_err = max(folded_err, abs(folded / mag - 1.0))
                if p.scale is not None:
                    w.write(p.scale.name, np.array([mag], dtype="<f4"))
            progress(total, total, "")
    finally:
        made.close()
    return how, folded_err


# --- report ---------------------------------------------------------------------------------------


def _check_layout(cfg: ModelConfig, arch: str, report: WriteReport) -> None:
    report.warnings += archs.loading_warnings(cfg, arch)


def _report_losses(plan: Plan, options: GGUFOptions, how: Counter, folded_err: float, report: WriteReport) -> None:
    if plan.embed_loss:
        report.warnings.append(plan.embed_loss)
    if plan.mode == "folded" and how:
        report.warnings.append(
            f"llama.cpp's {plan.arch!r} architecture loads no .scale tensors: each tensor scale was folded into the "
            f"fp16 block scale d (largest relative rounding {folded_err:.2e}); "
            "bitconvert.ternary_scales keeps the exact values"
        )
    if plan.fallbacks:
        report.warnings.append(
            f"{len(plan.fallbacks)} tensor(s) written as F16 because their rows are not a multiple of the "
            f"{options.gguf_type.upper()} block: {', '.join(plan.fallbacks)}"
        )
        report.details["fallback_f16"] = len(plan.fallbacks)


register_writer(GGUFWriter())
