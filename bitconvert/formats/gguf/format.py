"""``gguf``: llama.cpp / bitnet.cpp model files, read and written tensor by tensor.

Writer options: :class:`GGUFOptions`.

Scales stay exact. TQ types in the ``bitnet`` architecture store codes with block ``d = 1`` plus an
F32 ``[1]`` tensor ``blk.N.<name>.scale`` that llama.cpp multiplies into the matmul output. The
``llama`` architecture loads no such tensor, so there the scale is folded into every block's fp16
``d`` (rounded; reported). I2_S keeps one fp32 scale after the packed codes, as bitnet.cpp does.
Each stored scale is also recorded bit for bit under ``bitconvert.ternary_scales`` so converting
back restores it exactly, whatever its dtype and convention.

Reader: TQ1_0, TQ2_0, I2_S, F16, BF16, F32, Q8_0 tensors of the ``bitnet``, ``bitnet-b1.58``,
``bitnet-25`` and ``llama`` architectures, including llama.cpp-converted files whose scale was
folded per block (codes and the scale are recovered when every non-zero block has the same ``d``).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ...checkpoint import Checkpoint, TensorEntry, Value, as_dense, check_tensor_set
from ...config import Architecture, ModelConfig
from ...errors import CheckpointError, UsageError
from ...recipes import GGUF_RECIPES, Recipe, recipe_ternary, tq_block_d
from ...provenance import PROVENANCE_KEY, provenance_text
from ...scale_records import SCALES_KEY, decode_records, encode_record
from ...ternary import LinearClass, TernaryScale, TernaryWeight, recover_ternary
from .. import Progress, WriteReport, register_reader, register_writer
from ..hf.common import ordered_names
from ..options import choice_parser, option, parse_flag, recipe_field
from . import codecs, i2s_layouts, metadata, names, tokenizer
from .parser import GGUFFile, TensorInfo, is_gguf
from .stream_writer import KV, GGUFStreamWriter, PlannedGGUFTensor, kv_str

NAME = "gguf"
GGUF_TYPES = {"tq2_0": codecs.TQ2_0, "tq1_0": codecs.TQ1_0, "i2_s": codecs.I2_S, "f16": codecs.F16,
              "bf16": codecs.BF16, "f32": codecs.F32}  # fmt: skip
EMBED_TYPES = {"f16": codecs.F16, "bf16": codecs.BF16, "f32": codecs.F32, "q8_0": codecs.Q8_0}
TQ_TYPES = (codecs.TQ1_0, codecs.TQ2_0)
ENCODERS: dict[int, Callable[..., torch.Tensor]] = {
    codecs.TQ1_0: codecs.encode_tq1_0,
    codecs.TQ2_0: codecs.encode_tq2_0,
}
DECODERS = {codecs.TQ1_0: codecs.decode_tq1_0, codecs.TQ2_0: codecs.decode_tq2_0}
QK_NAMES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
DENSE_SLAB = 1 << 22  # values converted at a time when writing a float tensor
F16_OVERFLOW = 65520.0  # the smallest magnitude that rounds to infinity in F16


# --- Q/K row order: llama.cpp's llama architecture applies RoPE to interleaved pairs -----------


def _heads_for(name: str, cfg: ModelConfig) -> int:
    return cfg.num_attention_heads if name.endswith("q_proj.weight") else cfg.num_key_value_heads


def permute_qk(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF (rotate-half) row order -> llama.cpp's interleaved RoPE order, per head."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def unpermute_qk(w: torch.Tensor, heads: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def _needs_permute(gguf_arch: str, name: str) -> bool:
    return gguf_arch == metadata.ARCH_LLAMA and name.endswith(QK_NAMES)


# --- reader ---------------------------------------------------------------------------------------


def _scale_hints(f: GGUFFile) -> dict[str, TernaryScale]:
    raw = f.get(SCALES_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise CheckpointError(f.path, f"{SCALES_KEY} is not a string")
    return {name: r.scale for name, r in decode_records(raw, f.path).items()}


def _scale(stored: torch.Tensor, hint: TernaryScale | None) -> TernaryScale:
    """The stored magnitude as a scale; the recorded original when it rounds to exactly this value."""
    stored = stored.reshape(1)
    if hint is not None and torch.equal(hint.magnitude(stored.dtype).reshape(1), stored):
        return hint
    return TernaryScale(stored.clone(), LinearClass.AUTOBITLINEAR)


@dataclass
class _TensorSource:
    f: GGUFFile
    info: TensorInfo
    hf_name: str
    scale: TensorInfo | None
    hint: TernaryScale | None
    heads: int | None  # set for llama-architecture q/k, whose rows are permuted on disk
    notes: list[str]
    i2s_layout: str = i2s_layouts.DEFAULT_LAYOUT

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.f.path, problem, self.info.name)

    def _tensor_scale(self) -> torch.Tensor | None:
        if self.scale is None:
            return None
        s = self.f.read_float(self.scale.name).reshape(-1).float()
        if s.numel() != 1 or not bool(torch.isfinite(s).all()) or not bool(s[0] > 0):
            problem = f"scale must be one finite positive value, got {s.tolist()[:4]}"
            raise CheckpointError(self.f.path, problem, self.scale.name)
        return s

    def load_scale(self) -> TernaryScale:
        if self.info.type == codecs.I2_S:  # the scale sits after the codes in every layout
            raw = self.f.read_raw(self.info.name, self.info.nbytes - codecs.I2_S_TAIL, 4)
            return _scale(self._check_positive(raw.view(torch.float32)), self.hint)
        s = self._tensor_scale()
        assert s is not None
        return _scale(s, self.hint)

    def _check_positive(self, s: torch.Tensor) -> torch.Tensor:
        v = float(s.reshape(-1)[0])
        if not v > 0 or v == float("inf"):
            raise self.fail(f"I2_S scale is {v}, not finite and positive")
        return s

    def _order(self, w: torch.Tensor) -> torch.Tensor:
        return unpermute_qk(w, self.heads) if self.heads else w

    def load(self) -> Value:
        t = self.info
        if t.type == codecs.I2_S:
            codes, s = i2s_layouts.decode(self._raw_checked(), t.shape, self.i2s_layout)
            return TernaryWeight(self._order(codes), _scale(self._check_positive(s), self.hint))
        if t.type in TQ_TYPES:
            return self._load_tq()
        w = self.f.read_float(t.name)
        s = self._tensor_scale()
        if s is not None:
            if bool(((w == -1) | (w == 0) | (w == 1)).all()):
                return TernaryWeight(self._order(w.to(torch.int8)), _scale(s, self.hint))
            return self._order(w.float() * s)
        w = self._order(w)
        if self.hint is not None:
            found = recover_ternary(w)
            if found is not None and torch.equal(found[1].reshape(1), self.hint.magnitude(w.dtype).reshape(1)):
                return TernaryWeight(found[0], self.hint)
        return w

    def _raw_checked(self) -> torch.Tensor:
        raw = self.f.read_raw(self.info.name)
        n = self.info.nbytes - codecs.I2_S_TAIL
        bad = codecs.first_code_3(raw[:n])
        if bad is not None:
            raise self.fail(f"I2_S code 3 (not ternary) at value {bad * 4} or after")
        return raw

    def _load_tq(self) -> Value:
        t = self.info
        rows, cols = t.shape
        raw = self.f.read_raw(t.name).reshape(rows, -1)
        if t.type == codecs.TQ2_0:
            bad = codecs.first_code_3(codecs.tq2_0_raw_codes(raw, cols))
            if bad is not None:
                raise self.fail(f"TQ2_0 code 3 (not ternary) in row {bad // (cols // 4)}")
        codes, d = DECODERS[t.type](raw, cols)
        s = self._tensor_scale()
        used = codes.reshape(rows, -1, codecs.QK_K).ne(0).any(-1)  # a block of zeros says nothing of d
        dv = d[used]
        if dv.numel() == 0:
            dv = torch.ones(1, dtype=torch.float16)
        uniform = bool((dv == dv[0]).all()) and bool(torch.isfinite(dv[0])) and bool(dv[0] > 0)
        if uniform:
            codes = self._order(codes)
            if s is None:
                return TernaryWeight(codes, _scale(dv[:1].clone(), self.hint))
            if float(dv[0]) == 1.0:
                return TernaryWeight(codes, _scale(s, self.hint))
            # d and the tensor scale both apply: their product is exact in float64.
            return TernaryWeight(codes, TernaryScale(dv[:1].double() * s.double(), LinearClass.AUTOBITLINEAR))
        lo, hi = float(dv.float().min()), float(dv.float().max())
        self.notes.append(
            f"{self.hf_name}: {t.type_name} blocks carry different scales d ({lo:.6g} .. {hi:.6g}), so the tensor "
            "is no set of codes with one scale; loaded as float values"
        )
        w = codes.float().reshape(rows, -1, codecs.QK_K) * d.float().unsqueeze(-1)
        w = w.reshape(rows, cols)
        return self._order(w * s if s is not None else w)


def _stored_label(t: TensorInfo, scale: TensorInfo | None, i2s_layout: str = "") -> str:
    if t.type == codecs.I2_S:
        return f"I2_S ({i2s_layout}) + F32 scale in data"
    if scale is not None:
        return f"{t.type_name} + F32 scale tensor"
    return t.type_name + (" (scale in block d)" if t.type in TQ_TYPES else "")


class GGUFReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf(path))

    def read(self, path: Path) -> Checkpoint:
        f = GGUFFile(path)
        notes: list[str] = []
        tied = "output.weight" not in f.tensors
        arch, cfg = metadata.read_config(f, tied, notes)
        hints = _scale_hints(f)
        layout = _i2s_layout(f, notes)
        expected = cfg.expected_shapes()
        used: set[str] = set()
        entries: dict[str, TensorEntry] = {}
        for gname, hf in names.from_gguf_table(cfg).items():
            t = f.tensors.get(gname)
            if t is None:
                raise CheckpointError(path, "missing tensor", gname)
            if t.shape != expected[hf]:
                problem = f"shape {list(t.shape)} does not match the metadata, which implies {list(expected[hf])}"
                raise CheckpointError(path, problem, gname)
            used.add(gname)
            quantized = cfg.is_quantized_linear(hf)
            scale = f.tensors.get(names.scale_name(gname)) if quantized else None
            if scale is not None:
                used.add(scale.name)
            if t.type in (codecs.I2_S, *TQ_TYPES) and not quantized:
                raise CheckpointError(path, f"{t.type_name} is only read for quantized linear weights", gname)
            src = _TensorSource(
                f, t, hf, scale, hints.get(hf), _heads_for(hf, cfg) if _needs_permute(arch, hf) else None, notes, layout
            )
            ternary = t.type in (codecs.I2_S, *TQ_TYPES) or scale is not None
            cheap_scale = t.type == codecs.I2_S or scale is not None
            hint = hints.get(hf)
            if not ternary:
                dtype = codecs.FLOAT_TYPES.get(t.type, torch.float32)
            elif hint is not None:
                dtype = hint.dtype
            else:  # the scale as stored: fp32 tensor or I2_S tail, else the fp16 block d
                dtype = torch.float32 if cheap_scale else torch.float16
            entries[hf] = TensorEntry(
                hf, expected[hf], dtype, ternary, str(path), src.load, src.load_scale if cheap_scale else None,
                _stored_label(t, scale, f"{layout} layout" + ("" if f.get(I2S_LAYOUT_KEY) is not None else " assumed")),
            )  # fmt: skip
        for gname in f.tensors:
            if gname in used:
                continue
            if gname.startswith("rope_freqs") or gname.endswith(".rope_freqs.weight"):
                notes.append(f"ignored tensor {gname} (RoPE factors are recomputed from the config)")
                continue
            raise CheckpointError(path, "unexpected tensor: the metadata implies no such weight", gname)
        info = {
            "gguf_architecture": arch,
            "gguf_tokenizer": tokenizer.from_gguf(f),
            "gguf_file_type": f.get("general.file_type"),
        }
        if any(t.type == codecs.I2_S for t in f.tensors.values()):
            info["i2s_layout"] = layout if f.get(I2S_LAYOUT_KEY) is not None else f"{layout} (assumed: not recorded)"
        origin_keys = {"general.name": "model_name", "general.source.url": "source_url", "general.license": "license"}
        for key, field in origin_keys.items():
            value = f.get(key)
            if isinstance(value, str) and value:
                info[field] = value
        classes = {s.linear_class for s in hints.values()}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        elif not hints:
            info["linear_class"] = LinearClass.AUTOBITLINEAR  # GGUF scales are magnitudes
        ckpt = Checkpoint(NAME, path, cfg, entries, [], notes, info)
        check_tensor_set(ckpt)
        ckpt.side_files = _tokenizer_side_files(f, ckpt, notes)
        return ckpt


def _i2s_layout(f: GGUFFile, notes: list[str]) -> str:
    """The I2_S byte layout bitconvert recorded, else x86 (bitnet.cpp's default, the official files')."""
    recorded = f.get(I2S_LAYOUT_KEY)
    if recorded is None:
        if any(t.type == codecs.I2_S for t in f.tensors.values()):
            notes.append(
                "I2_S layout not recorded in the file: read as x86 (bitnet.cpp's default build, the official files); "
                "the bytes cannot tell x86, x86-rows and arm apart"
            )
        return i2s_layouts.DEFAULT_LAYOUT
    if recorded not in i2s_layouts.LAYOUTS:
        raise CheckpointError(f.path, f"{I2S_LAYOUT_KEY} is {recorded!r}, not one of {', '.join(i2s_layouts.LAYOUTS)}")
    return recorded


def _tokenizer_side_files(f: GGUFFile, ckpt: Checkpoint, notes: list[str]) -> list[Path]:
    """tokenizer.json / tokenizer_config.json rebuilt in a folder that lives as long as ``ckpt``."""
    if f.get("tokenizer.ggml.model") is None:
        return []
    folder = Path(tempfile.mkdtemp(prefix="bitconvert-gguf-tokenizer-"))
    weakref.finalize(ckpt, shutil.rmtree, folder, True)
    files = tokenizer.write_hf_tokenizer(f, folder)
    if not files:
        model = f.get("tokenizer.ggml.model")
        notes.append(f"tokenizer model {model!r} is not rebuilt as tokenizer.json (only gpt2 BPE is)")
    return files


# --- writer ---------------------------------------------------------------------------------------


@dataclass
class _Plan:
    hf: str
    tensor: PlannedGGUFTensor
    role: str  # "ternary" | "fallback" | "dense"
    scale: PlannedGGUFTensor | None = None


@dataclass(frozen=True)
class GGUFOptions:
    gguf_type: str = option(
        "tq2_0", "--gguf-type", "weight type of quantized linears: " + ", ".join(GGUF_TYPES),
        choice_parser("--gguf-type", GGUF_TYPES),
    )  # fmt: skip
    embed_type: str = option(
        "f16", "--embed-type", "type of token_embd (and an untied output): " + ", ".join(EMBED_TYPES),
        choice_parser("--embed-type", EMBED_TYPES),
    )  # fmt: skip
    allow_fallback: bool = option(
        False, "--allow-fallback", "write quantized linears a ternary type cannot hold as F16", parse_flag
    )
    recipe: Recipe = recipe_field(
        GGUF_RECIPES,
        "how a master is quantized: transformers (exact fp32 scale, default), llama.cpp (tq types: fp16 d = "
        "max|x| per block, as convert_hf_to_gguf.py) or bitnet.cpp (i2_s: its converter's folded scale)",
    )
    i2s_layout: str | None = option(
        None, "--i2s-layout", "I2_S byte layout (bitnet.cpp build): x86 (default, official files), x86-rows or arm",
        choice_parser("--i2s-layout", i2s_layouts.LAYOUTS),
    )  # fmt: skip


I2S_LAYOUT_KEY = "bitconvert.i2s_layout"


def _check_recipe(ckpt: Checkpoint, options: GGUFOptions, wtype: int) -> None:
    """Refuse a recipe or layout where it cannot do what its producer does."""
    if options.i2s_layout is not None and wtype != codecs.I2_S:
        raise UsageError(f"--i2s-layout applies to --gguf-type i2_s only, not {options.gguf_type}")
    if wtype == codecs.I2_S and not options.allow_fallback:
        layout = options.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
        for name, e in ckpt.tensors.items():
            problem = ckpt.is_quantized_linear(name) and i2s_layouts.layout_problem(layout, tuple(e.shape))
            if problem:
                raise CheckpointError(e.source, problem, name)
    recipe = options.recipe
    if recipe is Recipe.TRANSFORMERS:
        return
    if recipe is Recipe.LLAMA_CPP and wtype not in TQ_TYPES:
        raise UsageError(f"--recipe llama.cpp writes tq1_0 or tq2_0, as llama.cpp's converter; not {options.gguf_type}")
    if recipe is Recipe.BITNET_CPP and wtype != codecs.I2_S:
        raise UsageError(f"--recipe bitnet.cpp writes i2_s, as bitnet.cpp's converter; not {options.gguf_type}")
    stored = [n for n, e in ckpt.tensors.items() if e.ternary]
    if stored:
        raise UsageError(
            f"--recipe {recipe.value} quantizes a float master, but {ckpt.path} ({ckpt.format}) already holds ternary "
            f"codes (e.g. {stored[0]}), which are never requantized: drop --recipe"
        )


class GGUFWriter:
    name = NAME
    writes_directory = False
    Options = GGUFOptions

    def write(self, ckpt: Checkpoint, out: Path, options: GGUFOptions, progress: Progress) -> WriteReport:
        gguf_type, embed_type, allow_fallback = options.gguf_type, options.embed_type, options.allow_fallback
        cfg = ckpt.config
        arch = metadata.gguf_architecture(cfg.architecture, gguf_type)
        wtype = GGUF_TYPES[gguf_type]
        _check_recipe(ckpt, options, wtype)
        layout = options.i2s_layout or i2s_layouts.DEFAULT_LAYOUT
        report = WriteReport(NAME)
        if options.recipe is Recipe.LLAMA_CPP:
            scale_mode = "blocks"
        elif wtype in TQ_TYPES:
            scale_mode = "tensor" if arch != metadata.ARCH_LLAMA else "folded"
        else:
            scale_mode = "in-data" if wtype == codecs.I2_S else "dequantized"
        plans, fallbacks = self._plan(ckpt, arch, wtype, EMBED_TYPES[embed_type], scale_mode, allow_fallback)
        self._check_layout(cfg, arch, report)

        md: dict[str, KV] = {}
        name, source_url, license = metadata.origin(ckpt.info, ckpt.path)
        md.update(metadata.general(name, arch, metadata.FILE_TYPES[gguf_type], source_url, license))
        md.update(metadata.hyperparameters(cfg, arch))
        tok = ckpt.info.get("gguf_tokenizer")
        if tok:
            md.update(tok)
        else:
            tmeta = tokenizer.from_side_files(ckpt.side_files, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id)
            md.update(tmeta.kv)
            report.warnings += tmeta.warnings
        hints = {}
        for p in plans:
            e = ckpt.tensors[p.hf]
            if p.role != "dense" and e.load_scale is not None:
                hints[p.hf] = encode_record(e.load_scale())
        md.update(metadata.bitconvert_keys(cfg, ckpt.format, scale_mode, hints))
        if wtype == codecs.I2_S:
            md[I2S_LAYOUT_KEY] = kv_str(layout)
        if ckpt.info.get("provenance"):
            md[PROVENANCE_KEY] = kv_str(provenance_text(ckpt.info["provenance"]))

        flat = [t for p in plans for t in ((p.tensor, p.scale) if p.scale else (p.tensor,))]
        how: Counter = Counter()
        folded_err = 0.0
        with GGUFStreamWriter(out, md, flat) as w:
            for i, p in enumerate(plans):
                progress(i, len(plans), p.hf)
                value = ckpt.tensors[p.hf].load()
                if p.role == "dense":
                    if _needs_permute(arch, p.hf):
                        value = permute_qk(as_dense(value, torch.float32), _heads_for(p.hf, cfg))
                    w.write_parts(p.tensor.name, self._dense_parts(value, p, ckpt))
                    continue
                # float64 holds every stored scale exactly; each output dtype is then rounded to once.
                tw, source = recipe_ternary(value, options.recipe, LinearClass.AUTOBITLINEAR, torch.float64)
                how[source] += 1
                del value
                codes = permute_qk(tw.codes, _heads_for(p.hf, cfg)) if _needs_permute(arch, p.hf) else tw.codes
                mag = tw.scale.value.reshape(1)
                if p.role == "fallback":
                    if p.scale is not None:  # exact: codes in F16 and the scale tensor
                        w.write(p.tensor.name, codes.to(torch.float16))
                    else:
                        w.write(p.tensor.name, codes.to(torch.float16) * mag.to(torch.float16))
                elif p.tensor.type in TQ_TYPES:
                    if scale_mode == "blocks":  # llama.cpp's: fp16 d = max|x| per block, 0 for zeros
                        w.write(p.tensor.name, ENCODERS[p.tensor.type](codes, tq_block_d(codes, mag)))
                    elif scale_mode == "folded":
                        d = mag.to(torch.float16)
                        folded_err = max(folded_err, abs(float(d) / float(mag) - 1.0))
                        w.write(p.tensor.name, ENCODERS[p.tensor.type](codes, d.float()))
                    else:
                        w.write(p.tensor.name, ENCODERS[p.tensor.type](codes, 1.0))
                elif p.tensor.type == codecs.I2_S:
                    w.write(p.tensor.name, _encode_i2_s(codes, mag, layout, ckpt.tensors[p.hf].source, p.hf))
                else:  # f16 / bf16 / f32: codes x mean|W| in that dtype
                    dtype = codecs.FLOAT_TYPES[p.tensor.type]
                    w.write(p.tensor.name, codes.to(dtype) * mag.to(dtype))
                if p.scale is not None:
                    w.write(p.scale.name, mag.to(torch.float32))
            progress(len(plans), len(plans), "")
        report.tensors = len(flat)
        report.bytes_written = out.stat().st_size
        report.ternary_sources = dict(how)
        report.details.update(
            gguf_type=gguf_type, architecture=arch, token_embd=embed_type, scale=_SCALE_MODES[scale_mode],
            recipe=options.recipe.value,
        )
        if wtype == codecs.I2_S:
            report.details["i2s_layout"] = layout
        if scale_mode == "folded" and how:
            report.warnings.append(
                f"llama.cpp's {arch!r} architecture loads no .scale tensors: each tensor scale was folded into the "
                f"fp16 block scale d (largest relative rounding {folded_err:.2e}); "
                "bitconvert.ternary_scales keeps the exact values"
            )
        if fallbacks:
            report.warnings.append(
                f"{len(fallbacks)} tensor(s) written as F16 because their rows are not a multiple of the "
                f"{gguf_type.upper()} block: {', '.join(fallbacks)}"
            )
            report.details["fallback_f16"] = len(fallbacks)
        return report

    def _plan(
        self, ckpt: Checkpoint, arch: str, wtype: int, etype: int, scale_mode: str, allow_fallback: bool
    ) -> tuple[list[_Plan], list[str]]:
        cfg = ckpt.config
        plans, fallbacks = [], []
        block = codecs.TYPES[wtype].block if wtype in TQ_TYPES else (codecs.QK_I2_S if wtype == codecs.I2_S else 1)
        for hf in ordered_names(cfg, ckpt.tensors):
            e = ckpt.tensors[hf]
            gname = names.to_gguf(hf, cfg)
            if gname is None:
                raise CheckpointError(e.source, "no GGUF name for this tensor", hf)
            if ckpt.is_quantized_linear(hf):
                cols = e.shape[-1]
                if cols % block:
                    if not allow_fallback:
                        raise CheckpointError(
                            e.source,
                            f"rows of {cols} values are not a multiple of {block}, which "
                            f"{codecs.TYPES[wtype].name} needs (pass --allow-fallback to write such tensors as F16)",
                            hf,
                        )
                    fallbacks.append(hf)
                    # upstream llama.cpp's bitnet graph multiplies .scale in (checked); bitnet.cpp's is unverified
                    keep_scale = arch == metadata.ARCH_BITNET and wtype in TQ_TYPES
                    scale = PlannedGGUFTensor(names.scale_name(gname), codecs.F32, (1,)) if keep_scale else None
                    plans.append(_Plan(hf, PlannedGGUFTensor(gname, codecs.F16, e.shape), "fallback", scale))
                    continue
                scale = None
                if scale_mode == "tensor":
                    scale = PlannedGGUFTensor(names.scale_name(gname), codecs.F32, (1,))
                plans.append(_Plan(hf, PlannedGGUFTensor(gname, wtype, e.shape), "ternary", scale))
            elif hf in ("model.embed_tokens.weight", "lm_head.weight"):
                if etype == codecs.Q8_0 and e.shape[-1] % codecs.QK8_0:
                    problem = f"rows of {e.shape[-1]} values cannot be stored as Q8_0 (blocks of 32)"
                    raise CheckpointError(e.source, problem, hf)
                plans.append(_Plan(hf, PlannedGGUFTensor(gname, etype, e.shape), "dense"))
            else:  # norms F32; a linear left unquantized (modules_to_not_convert) F16, as llama.cpp does
                dense = codecs.F32 if len(e.shape) == 1 else codecs.F16
                plans.append(_Plan(hf, PlannedGGUFTensor(gname, dense, e.shape), "dense"))
        return plans, fallbacks

    def _dense_parts(self, value: Value, p: _Plan, ckpt: Checkpoint) -> Iterator[torch.Tensor]:
        """The tensor converted a slab of rows at a time: an embedding is never held twice."""
        t = p.tensor
        w = value if isinstance(value, torch.Tensor) else as_dense(value, torch.float32)
        rows = w.reshape(-1, t.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
        step = max(1, DENSE_SLAB // max(1, rows.shape[1]))
        for i in range(0, rows.shape[0], step):
            chunk = rows[i : i + step]
            if t.type == codecs.Q8_0:
                yield codecs.encode_q8_0(chunk.float())
                continue
            if t.type == codecs.F16 and chunk.dtype != torch.float16 and chunk.numel():
                lo, hi = torch.aminmax(chunk)  # one cheap pass; isfinite on the F16 result is far slower
                if float(hi) >= F16_OVERFLOW or float(lo) <= -F16_OVERFLOW:
                    raise CheckpointError(
                        ckpt.tensors[p.hf].source, "values overflow F16; choose --embed-type bf16 or f32", p.hf
                    )
            yield as_dense(chunk, codecs.FLOAT_TYPES[t.type])

    def _check_layout(self, cfg: ModelConfig, arch: str, report: WriteReport) -> None:
        if arch == metadata.ARCH_LLAMA:
            return
        if cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
            report.warnings.append(
                f"heads x head_dim ({cfg.num_attention_heads} x {cfg.head_dim}) differs from hidden_size "
                f"({cfg.hidden_size}): llama.cpp's {arch!r} architecture cannot load this model"
            )
        if not cfg.tie_word_embeddings:
            report.warnings.append(
                f"untied embeddings: output.weight written, which llama.cpp's {arch!r} architecture refuses to load"
            )
        if cfg.architecture is Architecture.BITNET and arch == metadata.ARCH_BITNET:
            report.warnings.append(
                "upstream llama.cpp runs the bitnet architecture with SiLU; this relu² model (2B-4T) gives wrong "
                "logits there (bitnet.cpp's I2_S build, --gguf-type i2_s, applies relu²)"
            )


def _encode_i2_s(codes: torch.Tensor, mag: torch.Tensor, layout: str, source: str, name: str) -> torch.Tensor:
    problem = i2s_layouts.layout_problem(layout, tuple(codes.shape))
    if problem:
        raise CheckpointError(source, problem, name)
    return i2s_layouts.encode(codes, float(mag.to(torch.float32)), layout)


_SCALE_MODES = {
    "blocks": "llama.cpp's: fp16 d = max|x| per 256-value block (the magnitude rounded to fp16)",
    "tensor": "exact: codes with d = 1 and an F32 .scale tensor per weight",
    "folded": "folded into each block's fp16 d",
    "in-data": "exact: fp32 after the packed codes",
    "dequantized": "dequantized: codes x mean|W| per value",
}


register_reader(GGUFReader())
register_writer(GGUFWriter())
