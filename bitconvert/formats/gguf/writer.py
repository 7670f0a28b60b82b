"""The ``gguf`` writer: a :class:`Checkpoint` laid out as one GGUF file, tensor by tensor.

Three stages: **plan** (each tensor's GGUF name, type and shape, and how its scale is kept),
**metadata** (hyperparameters, tokenizer, provenance, exact scale records), **stream** (each tensor
loaded and encoded through the type table in ``types.py`` by ``production.py``, on a worker that runs
ahead of the writes, and written in plan order).

Scales stay exact. TQ types in the ``bitnet`` architecture store codes with block ``d = 1`` plus an
F32 ``[1]`` tensor ``blk.N.<name>.scale`` that llama.cpp multiplies into the matmul output. The
``llama`` architecture loads no such tensor, so there the scale is folded into every block's fp16
``d`` (rounded; reported). I2_S keeps one fp32 scale after the packed codes, as bitnet.cpp does, in
the byte layout of ``--i2s-layout`` (recorded as ``bitconvert.i2s_layout``); TL1/TL2 keep it in the
slot after their data, packed by the tile ``--kernel-config`` / ``--kernel-preset`` gives each weight
shape (recorded as ``bitconvert.kernel_config``). ``--recipe`` quantizes a master as llama.cpp's
converter (fp16 ``d`` per block, no ``.scale``) or bitnet.cpp's does, and lays the file out as that
producer does where its record says so (``GGUFStyle``: its own keys, tensor order and dense types).
Each stored scale is also recorded bit for bit under ``bitconvert.ternary_scales`` so converting
back restores it exactly, whatever its dtype and convention.

A norm whose family adds an offset to its gain (Gemma's ``(1 + w)``) is stored as ``offset + w``, the
gain llama.cpp's graphs multiply by. A float tensor whose type the writer or the recipe chooses (a
norm with its offset, a producer's F16 norms and embeddings, a master's floats as F16) is stored
exactly or refused unless ``--allow-lossy``, which warns once per tensor; the token embedding keeps
the source's float type unless ``--embed-type`` (or a producer's recipe) names another, and the types
the user names (and the F16 of a linear left unquantized, as llama.cpp stores it) are written as
asked, with a warning per tensor they round.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import CheckpointError, UsageError
from ...io.pipeline import ahead_budget, produced_ahead
from ...io.provenance import PROVENANCE_KEY, provenance_text
from ...model.checkpoint import Checkpoint, Kind
from ...model.config import ModelConfig
from ...model.families import EMBEDDING_ROLE, LM_HEAD_ROLE
from ...ternary.recipes import RecipeRecord, check_recipe, recipe_record
from ...ternary.records import encode_record
from .. import Progress, WriteReport, register_writer
from ..hf.common import ordered_names
from . import archs, embedding_converter, i2s_layouts, kernel_config, metadata, names, production, tl_layouts
from . import tokenizer, types
from .options import TL_TYPES, GGUFOptions
from .plan import Plan, TensorPlan
from .stream_writer import KV, GGUFStreamWriter, PlannedGGUFTensor, kv_str
from .types import GGMLType

NAME = "gguf"
SCALE_MODES = {
    "blocks": "llama.cpp's: fp16 d = max|x| per 256-value block (the magnitude rounded to fp16)",
    "tensor": "exact: codes with d = 1 and an F32 .scale tensor per weight",
    "folded": "folded into each block's fp16 d",
    "in-data": "exact: fp32 after the packed codes",
    "dequantized": "dequantized: codes x mean|W| per value",
    "latent": "none: the master's own float weights",
}


def scale_mode(wtype: GGMLType, arch: str, record: RecipeRecord) -> str:
    """Where a quantized weight's scale goes for this type and architecture (see SCALE_MODES): the
    recipe's own place where it has one, else the data's (I2_S), else a ``.scale`` tensor where the
    architecture's graph multiplies one in, else folded into the blocks' ``d``."""
    if record.gguf_scale_mode is not None:
        return record.gguf_scale_mode
    if wtype.kind != "ternary":
        return "latent" if record.gguf_style.float_linears == "latent" else "dequantized"
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
        md = METADATA_STYLES[plan.style.metadata](ckpt, plan, options, report)
        how, folded_err, rounded = _stream(ckpt, plan, md, out, progress)
        report.warnings += rounded
        report.tensors = len(plan.flat())
        report.bytes_written = out.stat().st_size
        report.ternary_sources = dict(how)
        report.details.update(
            gguf_type=options.gguf_type, architecture=plan.arch, token_embd=_embed_type(ckpt, plan),
            scale=SCALE_MODES[plan.mode], recipe=plan.recipe.value,
        )  # fmt: skip
        if plan.wtype.id == types.I2_S:
            report.details["i2s_layout"] = plan.i2s_layout
        if plan.kernel_config is not None:
            report.details["kernel_config"] = plan.kernel_config.name
        _report_losses(plan, options, how, folded_err, report)
        return report


# --- stage 1: plan --------------------------------------------------------------------------------


def plan_tensors(ckpt: Checkpoint, options: GGUFOptions) -> Plan:
    cfg = ckpt.config
    record = recipe_record(options.recipe, cfg.family.task)
    wtype = types.BY_OPTION[options.gguf_type]
    _check_options(ckpt, options, wtype)
    arch = archs.gguf_architecture(cfg.family, options.gguf_type)
    layout = options.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
    plan = Plan(arch, wtype, scale_mode(wtype, arch, record), options.recipe, layout,
                _kernel_config(ckpt, options, wtype), style=record.gguf_style, allow_lossy=options.allow_lossy,
                task=cfg.family.task)  # fmt: skip
    forced = types.BY_OPTION[plan.style.dense_type] if plan.style.dense_type else None
    embeddings = {cfg.tensor_name(EMBEDDING_ROLE), cfg.tensor_name(LM_HEAD_ROLE)}
    offsets = cfg.norm_offsets()
    for hf in _tensor_order(ckpt, plan):
        e = ckpt.tensors[hf]
        gname = names.to_gguf(hf, cfg)
        if gname is None:
            raise CheckpointError(e.source, "no GGUF name for this tensor", hf)
        heads = names.permuted_heads(hf, cfg)
        if ckpt.is_quantized_linear(hf) and plan.mode != "latent":
            plan.tensors.append(_plan_quantized(plan, hf, gname, e.shape, e.source, options.allow_fallback))
            plan.tensors[-1].heads = heads
            continue
        if ckpt.is_quantized_linear(hf):  # the master's floats, in the float type asked for
            dense = wtype
        elif hf in embeddings:
            dense = forced or types.BY_OPTION[embed_type(ckpt, options)]
            if not dense.fits(e.shape):
                problem = f"rows of {e.shape[-1]} values cannot be stored as {dense.name} (blocks of {dense.block})"
                raise CheckpointError(e.source, problem, hf)
        else:  # norms F32; a linear left unquantized (modules_to_not_convert) F16, as llama.cpp does
            dense = forced or types.TYPES[types.F32 if len(e.shape) == 1 else types.F16]
        tensor = PlannedGGUFTensor(gname, dense.id, e.shape)
        offset = offsets.get(hf, 0.0)
        # the user's own choice of type (--embed-type; F16 for an unquantized linear) only warns
        chosen = forced is None and (hf in embeddings or (len(e.shape) > 1 and not ckpt.is_quantized_linear(hf)))
        plan.tensors.append(TensorPlan(hf, tensor, "dense", heads=heads, offset=offset, strict=not chosen))
    return plan


#: source float dtype -> the --embed-type that holds it exactly
_EXACT_EMBED = {"F16": "f16", "BF16": "bf16", "F32": "f32"}


def embed_type(ckpt: Checkpoint, options: GGUFOptions) -> str:
    """The type token_embd is written in: the one asked for, else the recipe's producer's (F16 for the
    llama.cpp and bitnet.cpp converters), else the source's own float type (F16 for any other)."""
    if options.embed_type is not None:
        return options.embed_type
    record = recipe_record(options.recipe, ckpt.config.family.task)
    if "embed_type" in record.defaults:
        return record.defaults["embed_type"]
    e = ckpt.tensors.get(ckpt.config.tensor_name(EMBEDDING_ROLE))
    return _EXACT_EMBED.get(e.dtype_name, "f16") if e is not None and e.kind is Kind.DENSE else "f16"


def _embed_type(ckpt: Checkpoint, plan: Plan) -> str:
    embedding = ckpt.config.tensor_name(EMBEDDING_ROLE)
    return next((types.TYPES[p.tensor.type].name.lower() for p in plan.tensors if p.hf == embedding), "")


def _tensor_order(ckpt: Checkpoint, plan: Plan) -> list[str]:
    """Model order (embedding, layers, final norm), or the producer's: source files by name, each
    file's tensors sorted by name (what iterating safetensors' ``keys()`` gives)."""
    if plan.style.tensor_order == "files":
        return sorted(ckpt.tensors, key=lambda n: (Path(ckpt.tensors[n].source).name, n))
    return ordered_names(ckpt.config, ckpt.tensors)


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
    chosen = {"gguf_type": options.gguf_type, "embed_type": options.embed_type, "i2s_layout": options.i2s_layout}
    source = f"{ckpt.path} ({ckpt.format})"
    check_recipe(options.recipe, NAME, chosen, ckpt.first_stored_ternary(), source, ckpt.config.family.task)


def _kernel_config(ckpt: Checkpoint, options: GGUFOptions, wtype: GGMLType) -> kernel_config.KernelConfig | None:
    """TL1/TL2: the configuration named, with a tile bitnet.cpp can pack for every quantized weight
    (else the weight's shape and the configuration are named); None for the other types."""
    choice = kernel_config.KernelChoice(options.kernel_config, options.kernel_preset)
    if not wtype.tiled:
        if choice:
            given = "--kernel-config" if options.kernel_config is not None else "--kernel-preset"
            raise UsageError(f"{given} applies to --gguf-type {' or '.join(TL_TYPES)} only, not {options.gguf_type}")
        return None
    if not choice:
        raise UsageError(
            f"--gguf-type {options.gguf_type} packs each weight by the kernels of one bitnet.cpp build: name its "
            "configuration with --kernel-config FILE (the build's include/kernel_config.ini) or --kernel-preset NAME"
        )
    config = choice.resolve(options.gguf_type)
    for name, e in ckpt.tensors.items():
        if not ckpt.is_quantized_linear(name):
            continue
        shape = tuple(e.shape)
        tile = config.tile(*shape) if len(shape) == 2 else None
        if tile is None:
            problem = (f"weight shape {'×'.join(map(str, shape))} has no kernel in the {config.name} kernel "
                       f"configuration (it has {config.shapes()}): a {wtype.name} build runs only the shapes it "
                       "was generated for")  # fmt: skip
            raise CheckpointError(e.source, problem, name)
        problem = tl_layouts.tile_problem(options.gguf_type, tile)
        if problem:
            raise CheckpointError(e.source, f"{config.name}, {tile.describe()}: {wtype.name} cannot pack it: {problem}",
                                  name)  # fmt: skip
    return config


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
    md.update(metadata.embedding_keys(ckpt, plan.arch, report.warnings))
    if not options.no_tokenizer:
        md.update(_tokenizer(ckpt, report))
    if tokenizer.MODEL_KEY not in md:
        md.update(tokenizer.no_vocab())
    records = {}
    for p in plan.tensors:
        scale = _exact_scale(ckpt, p)
        if scale is not None:
            records[p.hf] = encode_record(scale)
    md.update(metadata.bitconvert_keys(cfg, ckpt.format, plan.mode, records, ckpt.side_file_names()))
    if plan.wtype.id == types.I2_S:
        md[metadata.KEY_I2S_LAYOUT] = kv_str(plan.i2s_layout)
    if plan.kernel_config is not None:
        shapes = [p.tensor.shape for p in plan.tensors if p.role == "ternary"]
        md[kernel_config.RECORD_KEY] = kv_str(kernel_config.record(plan.kernel_config, shapes))
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
    """A GGUF source's tokenizer keys as they were; else keys built from tokenizer.json, in the
    vocabulary layout the family's record names (``gpt2`` BPE, ``llama`` pieces with scores)."""
    carried = ckpt.facts.gguf.tokenizer if ckpt.facts.gguf is not None else None
    if carried:
        return carried
    cfg = ckpt.config
    if cfg.family.gguf_vocab == "llama":
        return tokenizer.llama_from_side_files(ckpt.side_file_names(), cfg.vocab_size, cfg.raw, report.warnings)
    tmeta = tokenizer.from_side_files(ckpt.side_files, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
    report.warnings += tmeta.warnings
    return tmeta.kv


# --- stage 3: stream ------------------------------------------------------------------------------


def _stream(
    ckpt: Checkpoint, plan: Plan, md: dict[str, KV], out: Path, progress: Progress
) -> tuple[Counter, float, list[str]]:
    """Every tensor written in plan order while production (load, quantize, encode) runs ahead on a
    worker; (how each weight was obtained, the largest relative rounding of a scale folded into fp16 d,
    a warning per float tensor its type rounds: refused unless the plan allows it)."""
    how: Counter = Counter()
    folded_err = 0.0
    rounded: list[str] = []
    total = len(plan.tensors)
    work = production.pieces(plan, ckpt)
    count = Counter(piece.index for piece in work)
    made = produced_ahead(work, production.Producer(ckpt, plan), ahead_budget(work))
    try:
        with GGUFStreamWriter(out, md, plan.flat()) as w:
            for i, p in enumerate(plan.tensors):
                progress(i, total, p.hf)
                if p.role == "dense":
                    loss = production.Loss()
                    w.write_parts(p.tensor.name, _dense_parts(made, count[i], loss))
                    if loss.changed:
                        rounded.append(_rounded(ckpt, plan, p, loss))
                    continue
                m = next(made)  # a quantized weight whole, or its first block of rows
                how[m.source] += 1
                w.write_parts(p.tensor.name, itertools.chain([m.data], (next(made).data for _ in range(count[i] - 1))))
                mag = m.magnitude
                if plan.mode == "folded" and p.role == "ternary":
                    folded = float(production.folded_d(mag))
                    folded_err = max(folded_err, abs(folded / mag - 1.0))
                if p.scale is not None:
                    w.write(p.scale.name, np.array([mag], dtype="<f4"))
            progress(total, total, "")
    finally:
        made.close()
    return how, folded_err, rounded


def _dense_parts(made, n: int, loss: production.Loss):
    for _ in range(n):
        m = next(made)
        loss.add(m)
        yield m.data


def _rounded(ckpt: Checkpoint, plan: Plan, p: TensorPlan, loss: production.Loss) -> str:
    """The warning for a float tensor its type rounds; a CheckpointError where the plan does not allow it."""
    e = ckpt.tensors[p.hf]
    stored = types.TYPES[p.tensor.type].name + (f" of w + {p.offset:g}" if p.offset else "")
    what = f"{loss.changed} of {loss.values} values change when stored as {stored} (largest change {loss.worst:.3g})"
    if p.strict and not plan.allow_lossy:
        raise CheckpointError(e.source, f"{what}; pass --allow-lossy to write it so", p.hf)
    return f"{p.hf} ({p.tensor.name}): {what}"


# --- report ---------------------------------------------------------------------------------------


def _check_layout(cfg: ModelConfig, arch: str, report: WriteReport) -> None:
    report.warnings += archs.loading_warnings(cfg, arch)


def _report_losses(plan: Plan, options: GGUFOptions, how: Counter, folded_err: float, report: WriteReport) -> None:
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


#: the key sets a recipe's GGUFStyle names: bitconvert's own, or a producer's
METADATA_STYLES = {
    "bitconvert": _metadata,
    "bitnet-embedding-converter": lambda ckpt, plan, options, report: embedding_converter.metadata(ckpt, plan, report),
}

register_writer(GGUFWriter())
