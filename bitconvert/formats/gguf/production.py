"""The GGUF writer's stage 3 production: each planned tensor loaded, quantized and encoded into bytes.

Production runs on :func:`bitconvert.io.pipeline.produced_ahead`'s worker, in plan order, ahead of the
file writes. Its unit is a :class:`Piece`: a quantized weight whole, a float tensor a slab of rows
at a time (an embedding is never held twice). A bf16 master weight in the transformers recipe goes
to TQ1_0/TQ2_0/I2_S bytes straight from its bit patterns (:func:`bitconvert.ternary.fast.bf16_codes.bf16_code_rows`): the same
codes as quantizing it, never materialised as one int8 tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...model.checkpoint import Checkpoint, TensorEntry, Value, as_dense, entry_as_ternary, quantizing
from ...errors import CheckpointError
from ...ternary.recipes import Recipe, recipe_quantizer, tq_block_d
from ...ternary import LinearClass, recover_ternary
from ...ternary.fast.bf16_codes import bf16_code_rows
from ...ternary import bf16_scale_threshold
from . import i2s_layouts, names, types
from .plan import Plan, TensorPlan
from .types import GGMLType

DENSE_SLAB = 1 << 22  # values converted per piece when writing a float tensor
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


@dataclass
class Made:
    data: torch.Tensor  # the piece's bytes (any dtype; written as stored)
    source: str = ""  # quantized weights: how the ternary form was obtained (kept/recovered/quantized)
    magnitude: torch.Tensor | None = None  # quantized weights: mean|W|, float64 [1]


def pieces(plan: Plan) -> list[Piece]:
    out = []
    for i, p in enumerate(plan.tensors):
        if p.role != "dense":
            out.append(Piece(i, 0, 0, p.tensor.nbytes))
            continue
        shape = p.tensor.shape
        cols = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        row_bytes = types.TYPES[p.tensor.type].nbytes((cols,))
        step = max(1, DENSE_SLAB // max(1, cols))
        for r in range(0, max(rows, 1), step):  # an empty tensor is still one (empty) piece
            stop = min(r + step, rows)
            out.append(Piece(i, r, stop, (stop - r) * row_bytes))
    return out


class Producer:
    """``producer(piece) -> Made``, called in plan order (a float tensor is loaded at its first slab)."""

    def __init__(self, ckpt: Checkpoint, plan: Plan) -> None:
        self.ckpt = ckpt
        self.plan = plan
        self._rows: torch.Tensor | None = None  # the float tensor being sliced, as [rows, cols]

    def __call__(self, piece: Piece) -> Made:
        p = self.plan.tensors[piece.index]
        entry = self.ckpt.tensors[p.hf]
        if p.role != "dense":
            return _ternary(p, self.plan, entry, entry.load())
        if piece.start == 0:
            value = entry.load()
            if p.heads:
                value = names.permute_qk(as_dense(value, torch.float32), p.heads)
            w = value if isinstance(value, torch.Tensor) else as_dense(value, torch.float32)
            self._rows = w.reshape(-1, p.tensor.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
        rows = self._rows
        assert rows is not None
        if piece.stop >= rows.shape[0]:
            self._rows = None
        return Made(_dense_slab(rows[piece.start : piece.stop], types.TYPES[p.tensor.type], entry))


def _ternary(p: TensorPlan, plan: Plan, entry: TensorEntry, value: Value) -> Made:
    made = _ternary_from_bits(p, plan, entry, value)
    if made is not None:
        return made
    # float64 holds every stored scale exactly; each output dtype is then rounded to once.
    tw, source = entry_as_ternary(entry, value, LinearClass.AUTOBITLINEAR, torch.float64, recipe_quantizer(plan.recipe))
    del value
    codes = names.permute_qk(tw.codes, p.heads) if p.heads else tw.codes
    mag = tw.scale.value.reshape(1)
    return Made(encode_ternary(p, plan, codes, mag), source, mag)


def _ternary_from_bits(p: TensorPlan, plan: Plan, entry: TensorEntry, value: Value) -> Made | None:
    """TQ1_0/TQ2_0/I2_S bytes of a bf16 master straight from its bits, where that is what quantizing
    gives; else None."""
    t = types.TYPES[p.tensor.type]
    if p.role != "ternary" or plan.recipe is not Recipe.TRANSFORMERS or not isinstance(value, torch.Tensor):
        return None
    if value.dtype != torch.bfloat16 or value.dim() != 2 or not _encodes_rows(t, plan, value.shape[1]):
        return None
    if recover_ternary(value) is not None:
        return None
    with quantizing(entry):
        m, threshold = bf16_scale_threshold(value)
    if threshold is None:
        return None
    mag = m.reshape(1).to(torch.float64)  # as quantize(value, AUTOBITLINEAR, float64) stores it
    order = names.permute_qk(torch.arange(value.shape[0]), p.heads).numpy() if p.heads else None
    rows, cols = value.shape
    code_rows = bf16_code_rows(value, threshold, order)
    if t.id == types.I2_S:
        data = i2s_layouts.encode_rows(code_rows, rows, cols, float(mag.to(torch.float32)), plan.i2s_layout)
    else:
        d = mag.to(torch.float16).float() if plan.mode == "folded" else 1.0
        data = t.encode_rows(code_rows, rows, cols, d)
    return Made(data, "quantized", mag)


def _encodes_rows(t: GGMLType, plan: Plan, cols: int) -> bool:
    """Whether this type and scale mode have an encoder taking codes by rows (see encode_ternary)."""
    if t.id == types.I2_S:
        return plan.mode == "in-data" and i2s_layouts.encodes_rows(plan.i2s_layout, cols)
    return t.encode_rows is not None and plan.mode in ("tensor", "folded")


def encode_ternary(p: TensorPlan, plan: Plan, codes: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """The bytes of one quantized weight: codes (and the scale where the data holds it) in its type."""
    t = types.TYPES[p.tensor.type]
    mode = plan.mode
    if t.kind == "ternary":
        if t.id == types.I2_S:
            return i2s_layouts.encode(codes, float(mag.to(torch.float32)), plan.i2s_layout)
        if mode == "in-data":
            return t.encode(codes, float(mag.to(torch.float32)))
        if mode == "blocks":  # llama.cpp's: fp16 d = max|x| per block, 0 for a block of zeros
            return t.encode(codes, tq_block_d(codes, mag, t.block))
        d = mag.to(torch.float16).float() if mode == "folded" else 1.0
        return t.encode(codes, d)
    if p.scale is not None:  # F16 fallback beside an exact .scale tensor
        return t.encode(codes.to(t.torch_dtype))
    return t.encode(codes.to(t.torch_dtype) * mag.to(t.torch_dtype))  # codes x mean|W| in that dtype


def _dense_slab(chunk: torch.Tensor, t: GGMLType, entry: TensorEntry) -> torch.Tensor:
    """Rows of a float tensor in type ``t``; refused where a value would overflow it."""
    if t.max_finite is None or chunk.dtype == t.torch_dtype or not chunk.numel():
        return t.encode(chunk)
    if chunk.dtype == torch.bfloat16 and t.torch_dtype == torch.float16 and chunk.is_contiguous():
        return _bf16_to_f16(chunk, t, entry)
    lo, hi = torch.aminmax(chunk)  # one cheap pass; isfinite on the converted result is far slower
    if float(hi) >= t.max_finite or float(lo) <= -t.max_finite:
        _overflow(t, entry)
    return t.encode(chunk)


def _bf16_to_f16(chunk: torch.Tensor, t: GGMLType, entry: TensorEntry) -> torch.Tensor:
    """bf16 -> f16, checked for overflow on the bit patterns first (a magnitude of 65536 or more,
    infinity included, rounds past F16's largest finite value). The check runs in numpy, in steps
    that stay in cache; the conversion is one torch call, as each call wakes torch's thread pool
    (milliseconds on a loaded machine), which small steps would pay many times over."""
    bits = chunk.reshape(-1).view(torch.int16).numpy().view(np.uint16)
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
