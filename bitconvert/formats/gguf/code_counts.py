"""How many codes -1, 0 and +1 a TQ1_0, TQ2_0 or I2_S tensor holds, and the scale it stores, from its bytes.

Checks that need no decoded weight (``verify`` without a manifest, ``upload --dry-run``) ask only
these counts and the scale. Every code byte maps to a fixed count of each code, so a 256-entry
table per kind of byte turns a byte histogram into the counts; the scale is one word (I2_S) or
the block ``d`` all blocks holding a code agree on. Layout facts are in docs/formats.md.
"""

from __future__ import annotations

import math

import numpy as np

from ...dtypes import float_bits, itemsize
from ...ternary.linear_class import LinearClass
from ...ternary.records import ScaleRecord
from ...ternary.scale import Scale
from ...ternary.stats import FIELD_COUNTS, CodeCounts
from . import codecs, types

#: blocks per step: a few hundred KB of bytes, in cache
_BLOCK_CHUNK = 4096


def _trit_table(muls: tuple[int, ...], canonical: np.ndarray) -> np.ndarray:
    """Per byte: counts of codes -1, 0, +1 among the trits TQ1_0 decodes with ``muls``, and 1 in the
    last column where no trits encode to the byte (the reader refuses such bytes)."""
    table = np.zeros((256, 4), dtype=np.int64)
    for b in range(256):
        for m in muls:
            table[b, (((b * m) & 0xFF) * 3) >> 8] += 1
    table[~canonical, 3] = 1
    return table


_TQ1_QS = _trit_table((1, 3, 9, 27, 81), codecs.TQ1_QS_OK)
_TQ1_QH = _trit_table((1, 3, 9, 27), codecs.TQ1_QH_OK)


def _zero_byte(table: np.ndarray) -> int:
    """The one valid byte whose fields are all code 0 (any other byte holds a non-zero or invalid code)."""
    fields = table[:, :3].sum(axis=1)
    return int(np.flatnonzero((table[:, 1] == fields) & (table[:, 3] == 0))[0])


#: per block type: (bytes per block, [(byte range, code-count table, its all-zero byte)], offset of the fp16 d)
_BLOCKS = {
    types.TQ2_0: (
        codecs.TQ2_0_BYTES,
        [((0, codecs.TQ2_0_QS), FIELD_COUNTS, _zero_byte(FIELD_COUNTS))],
        codecs.TQ2_0_QS,
    ),
    types.TQ1_0: (
        codecs.TQ1_0_BYTES,
        [((0, 48), _TQ1_QS, _zero_byte(_TQ1_QS)), ((48, codecs.TQ1_0_QS), _TQ1_QH, _zero_byte(_TQ1_QH))],
        codecs.TQ1_0_QS,
    ),
}
F16_ONE = float_bits(1.0, "F16")


def _histogram_counts(data: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.bincount(data.reshape(-1), minlength=256) @ table


def block_counts(raw: np.ndarray, type_id: int) -> tuple[CodeCounts, int | None]:
    """Code counts of a TQ1_0/TQ2_0 tensor's bytes, and the ``d`` word (fp16 bits) every block holding
    a non-zero code stores (fp16 1.0 when none does); None for ``d`` when those blocks disagree."""
    block_bytes, segments, d_at = _BLOCKS[type_id]
    blocks = raw.reshape(-1, block_bytes)
    total = np.zeros(4, dtype=np.int64)
    found: int | None = None
    agree = True
    for b0 in range(0, blocks.shape[0], _BLOCK_CHUNK):
        chunk = blocks[b0 : b0 + _BLOCK_CHUNK]
        used = np.zeros(chunk.shape[0], dtype=bool)
        for (lo, hi), table, zero in segments:
            part = np.ascontiguousarray(chunk[:, lo:hi])
            total += _histogram_counts(part, table)
            used |= (part != zero).any(axis=1)  # a block of zeros says nothing of d
        d = np.ascontiguousarray(chunk[used, d_at : d_at + 2]).view("<u2").reshape(-1)
        if not d.size or not agree:
            continue
        if found is None:
            found = int(d[0])
        agree = not np.any(d != found)
    return _counts(total), (F16_ONE if found is None else found) if agree else None


def block_d(raw: np.ndarray, type_id: int) -> tuple[int | None, CodeCounts | None]:
    """The ``d`` word :func:`block_counts` finds, mostly without counting: where every block stores the
    same ``d``, it is that word unless no block holds a code (then fp16 1.0, as loading reads it),
    which the first blocks nearly always settle. Else the blocks are counted: (``d``, the counts)."""
    block_bytes, segments, d_at = _BLOCKS[type_id]
    blocks = raw.reshape(-1, block_bytes)
    d = np.ascontiguousarray(blocks[:, d_at : d_at + 2]).view("<u2").reshape(-1)
    if d.size and not np.any(d != d[0]):
        word = int(d[0])
        return (word if word == F16_ONE or _any_code(blocks, segments) else F16_ONE), None
    counts, word = block_counts(raw, type_id)
    return word, counts


def _any_code(blocks: np.ndarray, segments: list) -> bool:
    """Whether any block holds a non-zero (or invalid) code, looking a chunk at a time."""
    for b0 in range(0, blocks.shape[0], _BLOCK_CHUNK):
        chunk = blocks[b0 : b0 + _BLOCK_CHUNK]
        if any(np.any(chunk[:, lo:hi] != zero) for (lo, hi), _, zero in segments):
            return True
    return False


def i2s_counts(raw: np.ndarray, shape: tuple[int, ...]) -> tuple[CodeCounts, int]:
    """Code counts of an I2_S tensor's bytes (any of the three layouts: they order the same 2-bit
    fields differently) and its fp32 scale word."""
    n = math.prod(shape) // 4
    scale = int(np.ascontiguousarray(raw[n : n + 4]).view("<u4")[0])
    total = np.zeros(4, dtype=np.int64)
    step = _BLOCK_CHUNK * 64
    for start in range(0, n, step):
        total += _histogram_counts(raw[start : min(start + step, n)], FIELD_COUNTS)
    return _counts(total), scale


def stored_scale(word: int, dtype_name: str, record: ScaleRecord | None) -> Scale:
    """The scale the reader loads for a stored magnitude ``word``: the recorded one while it rounds
    to exactly that word, else the magnitude itself (GGUF scales are magnitudes)."""
    stored = Scale(dtype_name, word.to_bytes(itemsize(dtype_name), "little"), LinearClass.AUTOBITLINEAR)
    return record.restores(stored) if record is not None else stored


def with_tensor_scale(d: int, tensor_scale: np.ndarray, record: ScaleRecord | None) -> Scale | None:
    """The scale of blocks storing ``d`` (fp16 bits) beside an F32 ``.scale`` tensor (its bytes): the
    tensor's where ``d`` is 1, else their product, exact in float64. None where either is not one
    finite positive value: loading then says what is wrong."""
    if tensor_scale.size != 4:
        return None
    s = np.ascontiguousarray(tensor_scale).view("<f4")[0]
    dv = np.uint16(d).view(np.float16)
    if not (np.isfinite(s) and s > 0 and np.isfinite(dv) and dv > 0):
        return None
    if d == F16_ONE:
        return stored_scale(int(np.ascontiguousarray(tensor_scale).view("<u4")[0]), "F32", record)
    return Scale.of(float(np.float64(dv) * np.float64(s)), LinearClass.AUTOBITLINEAR, "F64")


def _counts(total: np.ndarray) -> CodeCounts:
    minus, zero, plus, invalid = (int(v) for v in total)
    return minus, zero, plus, invalid
