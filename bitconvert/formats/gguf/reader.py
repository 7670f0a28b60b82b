"""The ``gguf`` reader: a GGUF file as a :class:`Checkpoint`, each tensor decoded when loaded.

TQ1_0, TQ2_0, I2_S, TL1, TL2, F16, BF16, F32 and Q8_0 tensors of every GGUF architecture a family is
written under (:mod:`.archs`), including llama.cpp-converted files whose scale was folded per block
(codes and the scale are recovered when every block holding a code has the same ``d``). Codecs are
found through the type table (``types.py``); bytes no encoder writes are refused, never decoded.
TL1/TL2 tensors are read with the kernel configuration the file records, else the one the caller
names (:data:`.kernel_config.ASSUMED`), else refused (:mod:`.tl_files`).

What each quantized linear is, before anything is loaded: TQ/I2_S codes, and floats beside a
``.scale`` tensor (the writer's F16 fallback, codes), are TERNARY; other floats of a quantized
linear are LATENT, carrying the exact scale ``bitconvert.ternary_scales`` recorded for them. A
TERNARY tensor whose blocks disagree on ``d`` (or whose floats are not codes) loads as float32
values, with a note: the file holds no codes with one scale there.

A norm whose family adds an offset to its gain (Gemma's ``1 + w``) is stored as ``offset + w`` (what
llama.cpp multiplies by) and loads as ``w``: the stored value minus the offset, in float32 (exact).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...dtypes import Dense, float_bits
from ...errors import CheckpointError
from ...io.provenance import PROVENANCE_KEY, parse_provenance
from ...model.checkpoint import (
    Checkpoint,
    Facts,
    GGUFFacts,
    Kind,
    Stored,
    TensorEntry,
    Value,
    check_tensor_set,
    float_stored,
)  # fmt: skip
from ...model.config import ModelConfig, QuantConfig, QuantMode
from ...model.families import GLOBAL_GGUF_BY_ROLE, LM_HEAD_ROLE
from ...ternary.linear_class import LinearClass
from ...ternary.records import SCALES_KEY, ScaleRecord, decode_records
from ...ternary.scale import Scale
from ...ternary.stats import CodeCounts, float_code_counts
from ...ternary.stats import code_counts as code_counts_of
from ...ternary.weight import TernaryWeight
from .. import register_reader
from . import code_counts, hf_tokenizer, i2s_layouts, metadata, names, tl_files, tokenizer, types
from .kernel_config import KernelConfig, Tile
from .parser import GGUFFile, TensorInfo, is_gguf

NAME = "gguf"


def _records(f: GGUFFile) -> dict[str, ScaleRecord]:
    raw = f.get(SCALES_KEY)
    if raw is None:
        return {}
    if not isinstance(raw, str):
        raise CheckpointError(f.path, f"{SCALES_KEY} is not a string")
    return decode_records(raw, f.path)


@dataclass
class _TensorSource:
    f: GGUFFile
    info: TensorInfo
    hf_name: str
    scale: TensorInfo | None  # the F32 [1] ``.scale`` tensor beside a weight, if any
    record: ScaleRecord | None  # the exact scale recorded under bitconvert.ternary_scales
    heads: int | None  # set for q/k of a family whose rows are permuted on disk
    notes: list[str]
    layout: str | Tile = i2s_layouts.DEFAULT_LAYOUT  # the byte order of an I2_S (its layout) or TL tensor (its tile)

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.f.path, problem, self.info.name)

    def _restored(self, stored: Scale) -> Scale:
        """The stored magnitude as a scale; the recorded original when it rounds to exactly this value."""
        return self.record.restores(stored) if self.record is not None else stored

    def _tensor_scale(self, checked: bool = True) -> Scale | None:
        """The ``.scale`` tensor as the F32 magnitude it stores; checked: one finite positive value,
        else an error naming it; unchecked: None where it is not one value."""
        if self.scale is None:
            return None
        s = self.f.read_float(self.scale.name).float32().reshape(-1)
        if checked and (s.size != 1 or not np.isfinite(s).all() or not s[0] > 0):
            problem = f"scale must be one finite positive value, got {[float(v) for v in s[:4]]}"
            raise CheckpointError(self.f.path, problem, self.scale.name)
        if s.size != 1:
            return None
        return Scale("F32", s.tobytes(), LinearClass.AUTOBITLINEAR)

    def _in_data_scale(self, word: np.ndarray) -> Scale:
        """I2_S's fp32 magnitude after the codes (its four bytes), restored from the record."""
        return self._restored(Scale("F32", np.ascontiguousarray(word).tobytes(), LinearClass.AUTOBITLINEAR))

    def _order(self, w: np.ndarray) -> np.ndarray:
        return names.unpermute_qk(w, self.heads) if self.heads else w

    # --- the bytes as stored ------------------------------------------------------------------

    def stored(self) -> Stored:
        t = self.info
        raw = self.f.read_bytes(t.name)
        layout = f"gguf:{t.type_name}"
        if t.ggml.flat:  # I2_S, TL1, TL2: the fp32 scale follows the codes
            n = raw.size - t.ggml.tail
            counts = lambda: code_counts.i2s_counts(raw, t.shape)[0]
            if t.ggml.tiled:
                counts = lambda: code_counts_of(t.ggml.decode(raw, t.shape, self.layout)[0])
            return Stored(raw, layout, scale=self._in_data_scale(raw[n : n + 4]), counts=counts)
        if t.ggml.kind == "ternary":  # the scale is the d of the blocks holding codes (x a .scale tensor)
            word, counted = code_counts.block_d(raw, t.ggml.id)
            scale = self._block_scale(word)
            return Stored(raw, layout, scale=scale, counts=lambda: self._block_counts(raw, scale, counted))
        dtype = t.ggml.dtype_name
        if dtype is None:  # Q8_0: blocks, not values
            return Stored(raw, layout)
        if self.scale is not None:  # codes stored as floats, the magnitude in the .scale tensor
            one, s = float_bits(1.0, dtype), self._tensor_scale(checked=False)
            scale = self._restored(s) if s is not None else None
            return Stored(raw, "floats", dtype, scale, lambda: float_code_counts(raw, dtype, one))
        if self.record is not None:
            magnitude = self.record.scale.magnitude_bits(dtype)
            return Stored(raw, "floats", dtype, self.record.scale, lambda: float_code_counts(raw, dtype, magnitude))
        return float_stored(raw, dtype)

    def _block_counts(self, raw: np.ndarray, scale: Scale | None, counted: CodeCounts | None) -> CodeCounts | None:
        """The codes' counts where the blocks are codes with one scale (else :meth:`load` gives floats)."""
        if scale is None:
            return None
        return counted or code_counts.block_counts(raw, self.info.ggml.id)[0]

    def _block_scale(self, word: int | None) -> Scale | None:
        """The scale :meth:`load` gives TQ blocks whose code-holding blocks store ``d`` (fp16 bits);
        None where it gives floats (blocks disagreeing on ``d``, no finite positive ``d``) or fails."""
        if word is None:
            return None
        dv = np.uint16(word).view(np.float16)
        if not (np.isfinite(dv) and dv > 0):
            return None
        if self.scale is None:
            return self._restored(Scale("F16", np.uint16(word).tobytes(), LinearClass.AUTOBITLINEAR))
        if self.scale.type != types.F32:
            return None
        return code_counts.with_tensor_scale(word, self.f.read_bytes(self.scale.name), self.record)

    # --- the values -----------------------------------------------------------------------------

    def streams_rows(self) -> bool:
        """Whether :meth:`rows` can read this tensor: float rows as :meth:`load` gives them (no row
        order to undo, no ``.scale`` to apply)."""
        t = self.info
        return t.ggml.kind == "float" and self.scale is None and not self.heads and len(t.shape) == 2

    def rows(self, start: int, stop: int) -> Dense:
        """Rows ``start:stop`` of a float tensor, read on their own (see TensorEntry.rows)."""
        t = self.info
        if not 0 <= start <= stop <= t.shape[0]:
            raise ValueError(f"rows {start}:{stop} outside tensor {t.name} of {t.shape[0]} rows")
        row_bytes = t.ggml.nbytes(t.shape[1:])
        raw = self.f.read_bytes(t.name, start * row_bytes, (stop - start) * row_bytes)
        return t.ggml.decode_values(raw, (stop - start, *t.shape[1:]))

    def load(self) -> Value:
        if self.info.ggml.kind == "ternary":
            return self._load_codes()
        w = self.f.read_float(self.info.name)
        s = self._tensor_scale()
        if s is None:  # a latent weight (or dense tensor) as stored
            return Dense(self._order(w.data), w.dtype_name)
        values = w.float32()
        if bool(((values == -1) | (values == 0) | (values == 1)).all()):
            return TernaryWeight(self._order(values.astype(np.int8)), self._restored(s))
        return Dense(self._order(values * np.float32(s.item())), "F32")

    def _load_codes(self) -> Value:
        t = self.info
        raw = self.f.read_bytes(t.name)
        layout = (self.layout,) if t.ggml.flat else ()
        problem = t.ggml.first_invalid(raw, t.shape, *layout) if t.ggml.first_invalid else None
        if problem is not None:
            raise self.fail(problem)
        if t.ggml.flat:  # a byte order per bitnet.cpp build (I2_S layout, TL tile); one scale per tensor
            codes, scale = t.ggml.decode(raw, t.shape, self.layout)
            v = float(scale[0])
            if not (0 < v < float("inf")) and not (v == 0 and not codes.any()):  # quantize_i2_s: 0 for all zeros
                raise self.fail(f"{t.type_name} scale is {v}, not finite and positive")
            return TernaryWeight(self._order(codes), self._in_data_scale(scale))
        codes, d = t.ggml.decode_codes(raw, t.shape)
        return self._from_blocks(codes, d)

    def _from_blocks(self, codes: np.ndarray, d: np.ndarray) -> Value:
        """Codes with a ``d`` per block: one scale when every block that holds a code agrees."""
        rows, cols = self.info.shape
        block = self.info.ggml.block
        s = self._tensor_scale()
        used = (codes.reshape(rows, -1, block) != 0).any(-1)  # a block of zeros says nothing of d
        dv = d[used]
        if dv.size == 0:
            dv = np.ones(1, dtype=np.float16)
        if bool((dv == dv[0]).all()) and bool(np.isfinite(dv[0])) and bool(dv[0] > 0):
            codes = self._order(codes)
            if s is None:
                return TernaryWeight(codes, self._restored(Scale("F16", dv[:1].tobytes(), LinearClass.AUTOBITLINEAR)))
            if float(dv[0]) == 1.0:
                return TernaryWeight(codes, self._restored(s))
            # d and the tensor scale both apply: their product is exact in float64.
            return TernaryWeight(codes, Scale.of(float(dv[0]) * s.item(), LinearClass.AUTOBITLINEAR, "F64"))
        lo, hi = float(dv.astype(np.float32).min()), float(dv.astype(np.float32).max())
        self.notes.append(
            f"{self.hf_name}: {self.info.type_name} blocks carry different scales d ({lo:.6g} .. {hi:.6g}), so the "
            "tensor is no set of codes with one scale; loaded as float values"
        )
        w = (codes.astype(np.float32).reshape(rows, -1, block) * d.astype(np.float32)[..., None]).reshape(rows, cols)
        return Dense(self._order(w * np.float32(s.item()) if s is not None else w), "F32")


def _stored_label(t: TensorInfo, scale: TensorInfo | None, layout: str | Tile) -> str:
    if isinstance(layout, Tile):
        return f"{t.type_name} ({layout.tiles()}) + F32 scale in data"
    if t.ggml.flat:
        return f"{t.type_name} ({layout}) + F32 scale in data"
    if scale is not None:
        return f"{t.type_name} + F32 scale tensor"
    return t.type_name + (" (scale in block d)" if t.ggml.kind == "ternary" else "")


class GGUFReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_file() and (path.suffix.lower() == ".gguf" or is_gguf(path))

    def read(self, path: Path, i2s_layout: str | None = None, kernels: KernelConfig | None = None) -> Checkpoint:
        """``i2s_layout`` reads I2_S tensors in that byte layout whatever the file records (``verify
        --reproduce`` tries each on files that record none); ``kernels`` TL1/TL2 tensors with those
        tiles (else the recorded ones, else :data:`.kernel_config.ASSUMED`'s)."""
        f = GGUFFile(path)
        notes: list[str] = []
        tied = GLOBAL_GGUF_BY_ROLE[LM_HEAD_ROLE] + names.WEIGHT_SUFFIX not in f.tensors  # no output head: token_embd is it
        arch, cfg, precision = metadata.read_config(f, tied, notes)
        records = _records(f)
        layout, recorded = (i2s_layout, True) if i2s_layout else _i2s_layout(f, notes)
        tiles = tl_files.kernels_for(f, kernels, notes)
        used: set[str] = set()
        entries: dict[str, TensorEntry] = {}
        expected = cfg.expected_shapes()
        offsets = cfg.norm_offsets()
        for gname, hf in names.from_gguf_table(cfg).items():
            want = (hf, expected[hf])
            tile = tl_files.tile_for(f, gname, tiles)
            entries[hf] = _entry(f, cfg, gname, want, records.get(hf), used, notes, (tile or layout, recorded))
            if hf in offsets:
                entries[hf] = _without_offset(entries[hf], offsets[hf])
        _check_unused(f, used, notes)
        hf_tokenizer.check_vocabulary(f, cfg.vocab_size)
        has_i2s = any(t.type == types.I2_S for t in f.tensors.values())
        file_type = f.get(metadata.Keys.General.FILE_TYPE)
        gguf = GGUFFacts(arch, tokenizer.from_gguf(f), file_type, layout if has_i2s else None, recorded,
                         tiles[1] if tiles else None, _pooling_type(f, arch))  # fmt: skip
        # GGUF's dtypes are its own conventions (F32 norms, the --embed-type); the model's are recorded
        facts = Facts(_linear_class(records), container_dtypes=True, config_precision=precision, gguf=gguf)
        if any(e.kind is Kind.TERNARY for e in entries.values()):
            cfg.quantization = _held_quantization(cfg.quantization, facts.linear_class or LinearClass.AUTOBITLINEAR)
        ckpt = Checkpoint(NAME, path, cfg, entries, [], notes, facts)
        _read_origin(f, ckpt)
        check_tensor_set(ckpt)
        ckpt.side_files = hf_tokenizer.side_files(f, ckpt, notes)
        return ckpt


def _entry(
    f: GGUFFile, cfg: ModelConfig, gname: str, want: tuple[str, tuple[int, ...]],
    record: ScaleRecord | None, used: set[str], notes: list[str], layout: tuple[str | Tile, bool],
) -> TensorEntry:  # fmt: skip
    """The entry of one weight the metadata implies (HF name, shape), checked against the file's tensor."""
    hf, expected = want
    t = f.tensors.get(gname)
    if t is None:
        raise CheckpointError(f.path, "missing tensor", gname)
    if t.shape != expected:
        problem = f"shape {list(t.shape)} does not match the metadata, which implies {list(expected)}"
        raise CheckpointError(f.path, problem, gname)
    used.add(gname)
    quantized = cfg.is_quantized_linear(hf)
    scale = f.tensors.get(names.scale_name(gname)) if quantized else None
    if scale is not None:
        used.add(scale.name)
    coded = t.ggml.kind == "ternary"
    if coded and not quantized:
        raise CheckpointError(f.path, f"{t.type_name} is only read for quantized linear weights", gname)
    src = _TensorSource(f, t, hf, scale, record, names.permuted_heads(hf, cfg), notes, layout[0])
    if coded or scale is not None:
        kind = Kind.TERNARY
        # the scale's dtype: the recorded original's, else as stored (fp32 tensor or I2_S tail, fp16 block d)
        stored_dtype = "F32" if t.ggml.flat or scale is not None else "F16"
        dtype = record.scale.dtype_name if record is not None else stored_dtype
    else:
        kind = Kind.LATENT if quantized else Kind.DENSE
        dtype = t.ggml.dtype_name or "F32"
    shown = layout[0] if isinstance(layout[0], Tile) else f"{layout[0]} layout" + ("" if layout[1] else " assumed")
    label = _stored_label(t, scale, shown)
    return TensorEntry(
        hf, expected, kind, dtype, str(f.path), src.load, src.stored, label,
        record=record if kind is Kind.LATENT else None, rows=src.rows if src.streams_rows() else None,
    )  # fmt: skip


def _i2s_layout(f: GGUFFile, notes: list[str]) -> tuple[str, bool]:
    """The I2_S layout bitconvert recorded, else x86 (bitnet.cpp's default, the official files'); and
    whether it was recorded."""
    recorded = f.get(metadata.KEY_I2S_LAYOUT)
    if recorded is None:
        if any(t.type == types.I2_S for t in f.tensors.values()):
            notes.append(
                "I2_S layout not recorded in the file: read as x86 (bitnet.cpp's default build, the official files); "
                "the bytes cannot tell x86, x86-rows and arm apart"
            )
        return i2s_layouts.DEFAULT_LAYOUT, False
    if recorded not in i2s_layouts.LAYOUTS:
        problem = f"{metadata.KEY_I2S_LAYOUT} is {recorded!r}, not one of {', '.join(i2s_layouts.LAYOUTS)}"
        raise CheckpointError(f.path, problem)
    return recorded, True


def _linear_class(records: dict[str, ScaleRecord]) -> LinearClass | None:
    """The recorded scales' convention where they all share one; GGUF's own (magnitudes) where none is recorded."""
    classes = {r.scale.linear_class for r in records.values()}
    if len(classes) == 1:
        return classes.pop()
    return None if records else LinearClass.AUTOBITLINEAR


def _held_quantization(recorded: QuantConfig | None, linear_class: LinearClass) -> QuantConfig:
    """The quantization config of what the file holds: stored codes and scales (offline), whatever the
    recorded source config said (a master's is online), keeping the modules it leaves unquantized."""
    src = recorded or QuantConfig()
    return QuantConfig(linear_class, QuantMode.OFFLINE, src.modules_to_not_convert, src.use_rms_norm, src.rms_norm_eps)


def _check_unused(f: GGUFFile, used: set[str], notes: list[str]) -> None:
    for gname in f.tensors:
        if gname in used:
            continue
        if gname.startswith("rope_freqs") or gname.endswith(".rope_freqs.weight"):
            notes.append(f"ignored tensor {gname} (RoPE factors are recomputed from the config)")
            continue
        raise CheckpointError(f.path, "unexpected tensor: the metadata implies no such weight", gname)


def _read_origin(f: GGUFFile, ckpt: Checkpoint) -> None:
    """Where the model comes from, as the header says (``general.*``), and the provenance it carries."""
    for key, field in ((metadata.Keys.General.NAME, "model_name"), (metadata.Keys.General.SOURCE_URL, "source_url"),
                       (metadata.Keys.General.LICENSE, "license")):  # fmt: skip
        value = f.get(key)
        if isinstance(value, str) and value:
            setattr(ckpt.origin, field, value)
    ckpt.origin.recorded_provenance = parse_provenance(f.get(PROVENANCE_KEY), f.path)


def _pooling_type(f: GGUFFile, arch: str) -> int | None:
    value = f.get(metadata.Keys.LLM.POOLING_TYPE.format(arch=arch))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f.path, f"metadata key {arch}.pooling_type is not an integer: {value!r:.80}")
    return int(value)


def _without_offset(entry: TensorEntry, offset: float) -> TensorEntry:
    """A norm stored as ``offset + w`` loading as ``w`` (float32: the subtraction is exact)."""

    def load() -> Value:
        value = entry.load()
        assert isinstance(value, Dense)
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite values stay so (verify names them)
            return Dense(value.float32() - np.float32(offset), "F32")

    return replace(entry, load=load, dtype_name="F32", label=f"{entry.label} (stored + {offset:g})", rows=None)


register_reader(GGUFReader())
