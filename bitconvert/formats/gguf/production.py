"""The GGUF writer's stage 3 production: each planned tensor loaded, quantized and encoded into bytes.

Production runs on :func:`bitconvert.io.pipeline.produced_ahead`'s worker, in plan order, ahead of the
file writes. Its unit is a :class:`Piece`: a quantized weight whole, a float tensor a slab of rows
at a time (an embedding is never held twice). A bf16 master weight in the transformers recipe goes
to TQ1_0/TQ2_0/I2_S bytes straight from its bit patterns (:func:`bitconvert.ternary.fast.bf16_codes.bf16_code_rows`): the same
codes as quantizing it, never materialised as one int8 array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...dtypes import Dense, float_bits
from ...errors import CheckpointError
from ...io.output import FileSlice
from ...io.safetensors import page_release
from ...model.checkpoint import (
    ROW_BLOCK_VALUES,
    Checkpoint,
    TensorEntry,
    Value,
    as_dense,
    dense_rows,
    dense_rows_known,
    entry_as_ternary,
    quantizing,
    rows_copied_as,
)
from ...ternary import LinearClass, Scale, TernaryWeight, recover_ternary
from ...ternary.fast.bf16_codes import bf16_code_rows
from ...ternary.quantize import bf16_scale_threshold
from ...ternary.recipes import Recipe, recipe_quantizer, tq_block_d
from . import i2s_layouts, names, types
from .plan import Plan, TensorPlan
from .types import GGMLType

DENSE_SLAB = ROW_BLOCK_VALUES  # values converted per piece when writing a float tensor
TERNARY_SLAB = 4 * ROW_BLOCK_VALUES  # values of a quantized weight encoded per piece (a few MB of output)
_CHECK_STEP = 1 << 18  # values overflow-checked at a time: stays in cache
_BF16_F16_OVERFLOW = 0x4780  # |bf16 bits| from here (65536) to inf round past F16's largest finite value
_BF16_INF = 0x7F80


@dataclass(frozen=True)
class Piece:
    """One unit of production: rows ``start:stop`` of plan tensor ``index`` (all of a quantized one)."""

    index: int
    start: int
    stop: int
    nbytes: int
    #: rows copied as stored, file to file (a FileSlice): they take no memory while they wait
    copied: bool = False


@dataclass
class Made:
    data: np.ndarray | FileSlice  # the piece's bytes (any dtype; written as stored), or where they lie in a file
    source: str = ""  # quantized weights: how the ternary form was obtained (kept/recovered/quantized)
    magnitude: float | None = None  # quantized weights: mean|W|, exact in float64
    #: float pieces: values the stored type changed (read back minus the offset), of how many, by how much at most
    changed: int = 0
    values: int = 0
    worst: float = 0.0


@dataclass
class Loss:
    """What a float tensor's type rounded, summed over its pieces."""

    changed: int = 0
    values: int = 0
    worst: float = 0.0

    def add(self, made: Made) -> None:
        self.changed += made.changed
        self.values += made.values
        self.worst = max(self.worst, made.worst)


def pieces(plan: Plan, ckpt: Checkpoint | None = None) -> list[Piece]:
    """The production units of ``plan``, in order; with ``ckpt``, float tensors stored in the
    type they are written in are copied as stored."""
    out = []
    for i, p in enumerate(plan.tensors):
        if p.role != "dense":
            out += _ternary_pieces(i, p, plan)
            continue
        copied = ckpt is not None and _copies_as_stored(p, ckpt.tensors[p.hf])
        shape = p.tensor.shape
        cols = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        row_bytes = 0 if copied else types.TYPES[p.tensor.type].nbytes((cols,))  # a copy takes no memory
        step = max(1, DENSE_SLAB // max(1, cols))
        for r in range(0, max(rows, 1), step):  # an empty tensor is still one (empty) piece
            stop = min(r + step, rows)
            out.append(Piece(i, r, stop, (stop - r) * row_bytes, copied))
    return out


def _copies_as_stored(p: TensorPlan, entry: TensorEntry) -> bool:
    """Whether a float tensor's GGUF bytes are its stored bytes: its own dtype, no offset, no permutation."""
    dtype_name = types.TYPES[p.tensor.type].dtype_name
    same_rows = len(entry.shape) == 2 and tuple(entry.shape) == tuple(p.tensor.shape)
    return dtype_name is not None and rows_copied_as(entry, dtype_name) and same_rows and not p.heads and not p.offset


def _ternary_pieces(index: int, p: TensorPlan, plan: Plan) -> list[Piece]:
    """A quantized weight whole (``stop`` 0), or by blocks of rows where its type encodes rows on
    their own (TQ1_0, TQ2_0 and I2_S's block layouts): the last block carries the type's tail."""
    t, shape = types.TYPES[p.tensor.type], p.tensor.shape
    rows, cols = (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (1, 0)
    if p.role != "ternary" or rows * cols <= TERNARY_SLAB or not _encodes_rows(t, plan, cols):
        return [Piece(index, 0, 0, p.tensor.nbytes)]
    row_bytes = (p.tensor.nbytes - t.tail) // rows
    step = max(1, TERNARY_SLAB // cols)
    return [
        Piece(index, r, min(r + step, rows), (min(r + step, rows) - r) * row_bytes + (t.tail if r + step >= rows else 0))
        for r in range(0, rows, step)
    ]


class Producer:
    """``producer(piece) -> Made``, called in plan order (a float tensor is loaded at its first slab)."""

    def __init__(self, ckpt: Checkpoint, plan: Plan) -> None:
        self.ckpt = ckpt
        self.plan = plan
        self._rows: Dense | None = None  # the float tensor being sliced, as [rows, cols]
        self._encode: RowBytes | None = None  # the quantized weight being encoded by blocks of rows

    def __call__(self, piece: Piece) -> Made:
        p = self.plan.tensors[piece.index]
        entry = self.ckpt.tensors[p.hf]
        if p.role != "dense" and not piece.stop:
            return _ternary(p, self.plan, entry, entry.load())
        if p.role != "dense":
            return self._ternary_rows(p, entry, piece)
        if piece.copied and entry.row_bytes is not None:  # the stored bytes themselves, copied file to file
            return Made(entry.row_bytes(piece.start, piece.stop))
        if not p.heads and len(entry.shape) == 2 and dense_rows_known(entry):  # read block by block
            chunk = dense_rows(entry, piece.start, piece.stop)
        else:
            chunk = self._loaded_rows(p, entry, piece)
        t = types.TYPES[p.tensor.type]
        stored = chunk if not p.offset else Dense(chunk.float32() + np.float32(p.offset), "F32")
        made = Made(_dense_slab(stored, t, entry))
        if t.dtype_name is not None and (p.offset or chunk.dtype_name != t.dtype_name):
            made.changed, made.worst = _rounding(chunk, made.data, t, p.offset)
            made.values = chunk.size
        return made

    def _ternary_rows(self, p: TensorPlan, entry: TensorEntry, piece: Piece) -> Made:
        """The bytes of rows ``piece.start:piece.stop`` of a quantized weight; its first block
        takes the scale and says how the weight was obtained (and its magnitude)."""
        shape = p.tensor.shape
        rows = math.prod(shape[:-1])
        made = Made(np.empty(0, np.uint8))
        if piece.start == 0:
            value = entry.load()
            found = _bits_encoder(p, self.plan, entry, value)
            if found is None:  # not straight from bf16 bits: the whole weight's bytes, sliced
                whole = _ternary(p, self.plan, entry, value)
                tail = types.TYPES[p.tensor.type].tail
                found = (lambda a, b: _row_bytes(whole.data, a, b, rows, tail)), whole.source, whole.magnitude
            self._encode, made.source, made.magnitude = found
            del value
        assert self._encode is not None
        made.data = self._encode(piece.start, piece.stop)
        if piece.stop >= rows:
            self._encode = None
        return made

    def _loaded_rows(self, p: TensorPlan, entry: TensorEntry, piece: Piece) -> Dense:
        """Rows ``piece.start:piece.stop`` of a float tensor loaded whole at its first slab."""
        if piece.start == 0:
            value = entry.load()
            w = value if isinstance(value, Dense) else as_dense(value, "F32")
            if p.heads:
                w = Dense(names.permute_qk(w.to("F32").data, p.heads), "F32")
            self._rows = w.reshape(-1, p.tensor.shape[-1]) if len(w.shape) > 1 else w.reshape(1, -1)
        rows = self._rows
        assert rows is not None
        if piece.stop >= rows.shape[0]:
            self._rows = None
        return rows.rows(piece.start, piece.stop)


def _rounding(source: Dense, stored: np.ndarray, t: GGMLType, offset: float) -> tuple[int, float]:
    """(how many values of ``source`` the stored bytes do not give back, the largest difference):
    each read back in float64, minus the norm's offset (exact there), against the source's value."""
    back = Dense(np.ascontiguousarray(stored).reshape(-1).view(np.uint8).view(_NUMPY[t.dtype_name]), t.dtype_name)
    got = back.float64().reshape(-1) - offset
    want = source.float64().reshape(-1)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    bad = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    return int(np.count_nonzero(bad)), float(np.max(diff[bad & ~np.isnan(diff)], initial=0.0))


_NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _ternary(p: TensorPlan, plan: Plan, entry: TensorEntry, value: Value) -> Made:
    made = _ternary_from_bits(p, plan, entry, value)
    if made is not None:
        return made
    # float64 holds every stored scale exactly; each output dtype is then rounded to once.
    quantizer = recipe_quantizer(plan.recipe, plan.task)
    tw, source = entry_as_ternary(entry, value, LinearClass.AUTOBITLINEAR, "F64", quantizer)
    del value
    codes = names.permute_qk(tw.codes, p.heads) if p.heads else tw.codes
    mag = tw.scale.item()
    return Made(encode_ternary(p, plan, codes, mag), source, mag)


#: ``encode(start, stop)``: the bytes of rows ``start:stop`` of one quantized weight (the last rows
#: with the type's tail)
RowBytes = Callable[[int, int], np.ndarray]


def _ternary_from_bits(p: TensorPlan, plan: Plan, entry: TensorEntry, value: Value) -> Made | None:
    """TQ1_0/TQ2_0/I2_S bytes of a bf16 master straight from its bits, where that is what quantizing
    gives; else None."""
    found = _bits_encoder(p, plan, entry, value)
    if found is None:
        return None
    encode, source, mag = found
    return Made(encode(0, value.shape[0]), source, mag)


def _bits_encoder(p: TensorPlan, plan: Plan, entry: TensorEntry, value: Value) -> tuple[RowBytes, str, float] | None:
    """(rows -> bytes, "quantized", mean|W|) of a bf16 master weight straight from its bits (the
    scale taken first, in one pass), where that is what quantizing gives; else None."""
    t = types.TYPES[p.tensor.type]
    if p.role != "ternary" or plan.recipe is not Recipe.TRANSFORMERS or entry.record is not None:
        return None
    if not isinstance(value, Dense) or value.dtype_name != "BF16" or len(value.shape) != 2:
        return None
    if not _encodes_rows(t, plan, value.shape[1]) or recover_ternary(value) is not None:
        return None
    release = page_release(value.data)  # read twice, never written: a mapped weight is never resident whole
    with quantizing(entry):
        m, threshold = bf16_scale_threshold(value, release)
    if threshold is None:
        return None
    mag = float(np.float32(m))  # as quantize(value, AUTOBITLINEAR, "F64") stores it
    rows, cols = value.shape
    order = names.permute_qk(np.arange(rows), p.heads) if p.heads else None
    code_rows = bf16_code_rows(value.data, threshold, order, release)
    d = folded_d(mag) if plan.mode == "folded" else 1.0

    def encode(start: int, stop: int) -> np.ndarray:
        def block(r0: int, r1: int) -> np.ndarray:
            return code_rows(start + r0, start + r1)

        if t.id != types.I2_S:
            return t.encode_rows(block, stop - start, cols, d)
        data = i2s_layouts.encode_rows(block, stop - start, cols, mag, plan.i2s_layout)
        return data if stop >= rows else data[: -i2s_layouts.TAIL]  # the tail (scale) ends the tensor

    return encode, "quantized", mag


def _row_bytes(data: np.ndarray, start: int, stop: int, rows: int, tail: int) -> np.ndarray:
    """Rows ``start:stop`` of a quantized weight's bytes laid out row after row (then ``tail`` bytes)."""
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    per_row = (flat.size - tail) // rows
    return flat[start * per_row : stop * per_row + (tail if stop >= rows else 0)]


def folded_d(magnitude: float) -> np.float16:
    """A magnitude folded into every block's fp16 ``d``: rounded once to fp16 (through float32, as torch does)."""
    return np.uint16(float_bits(magnitude, "F16")).view(np.float16)


def _encodes_rows(t: GGMLType, plan: Plan, cols: int) -> bool:
    """Whether this type and scale mode have an encoder taking codes by rows (see encode_ternary)."""
    if t.id == types.I2_S:
        return plan.mode == "in-data" and i2s_layouts.encodes_rows(plan.i2s_layout, cols)
    return t.encode_rows is not None and plan.mode in ("tensor", "folded")


def encode_ternary(p: TensorPlan, plan: Plan, codes: np.ndarray, mag: float) -> np.ndarray:
    """The bytes of one quantized weight: codes (and the scale where the data holds it) in its type."""
    t = types.TYPES[p.tensor.type]
    mode = plan.mode
    if t.kind == "ternary":
        if t.flat:  # I2_S, TL1, TL2: the fp32 scale follows the codes
            return t.encode(codes, mag, plan.layout(codes.shape))
        if mode == "blocks":  # llama.cpp's: fp16 d = max|x| per block, 0 for a block of zeros
            return t.encode(codes, tq_block_d(codes, mag, t.block))
        return t.encode(codes, folded_d(mag) if mode == "folded" else 1.0)
    if p.scale is not None:  # F16 fallback beside an exact .scale tensor: the codes themselves
        return t.encode(Dense(codes, "I8").to(t.dtype_name))
    # codes x mean|W| in that dtype (mean|W| rounded to it once: exact products)
    return t.encode(TernaryWeight(codes, Scale.of(mag, LinearClass.AUTOBITLINEAR, "F64")).dequantize(t.dtype_name))


def _dense_slab(chunk: Dense, t: GGMLType, entry: TensorEntry) -> np.ndarray:
    """Rows of a float tensor in type ``t``; refused where a value would overflow it."""
    if t.max_finite is None or chunk.dtype_name == t.dtype_name or not chunk.size:
        return t.encode(chunk)
    if chunk.dtype_name == "BF16" and t.dtype_name == "F16":
        return _bf16_to_f16(chunk, t, entry)
    values = chunk.float64() if chunk.dtype_name == "F64" else chunk.data
    lo, hi = np.min(values), np.max(values)  # one cheap pass; a check on the converted result is slower
    if float(hi) >= t.max_finite or float(lo) <= -t.max_finite:
        _overflow(t, entry)
    return t.encode(chunk)


def _bf16_to_f16(chunk: Dense, t: GGMLType, entry: TensorEntry) -> np.ndarray:
    """bf16 -> f16, checked for overflow on the bit patterns first (a magnitude of 65536 or more,
    infinity included, rounds past F16's largest finite value), in steps that stay in cache."""
    bits = np.ascontiguousarray(chunk.data).reshape(-1)
    mag = np.empty(min(_CHECK_STEP, bits.size), dtype=np.uint16)
    for a in range(0, bits.size, _CHECK_STEP):
        b = min(a + _CHECK_STEP, bits.size)
        m = np.bitwise_and(bits[a:b], 0x7FFF, out=mag[: b - a])
        top = int(m.max())
        if top >= _BF16_F16_OVERFLOW and (top <= _BF16_INF or _overflows(m)):  # past inf: a NaN, look on
            _overflow(t, entry)
    return t.encode(chunk)


def _overflows(magnitude_bits: np.ndarray) -> bool:
    return bool(((magnitude_bits >= _BF16_F16_OVERFLOW) & (magnitude_bits <= _BF16_INF)).any())


def _overflow(t: GGMLType, entry: TensorEntry) -> None:
    raise CheckpointError(entry.source, f"values overflow {t.name}; choose --embed-type bf16 or f32", entry.name)
