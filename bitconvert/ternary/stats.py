"""Code counts read off stored bytes, without decoding them: packed 2-bit bytes and float words.

The HF row-block layout (:func:`bitconvert.ternary.packing.pack_codes`) keeps four codes per byte, so
a 256-entry table over byte values counts codes, and invalid fields (3), from a byte histogram;
row-major codes come out one plane at a time in cache-sized chunks. Floats that are codes x one
magnitude (``unpack`` output) are counted by comparing their words with that magnitude's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..dtypes import EXPONENT_BITS, itemsize, value_item
from .packing import VALUES_PER_BYTE

#: counts of codes -1, 0, +1 and of invalid fields
CodeCounts = tuple[int, int, int, int]

#: bytes per step: small enough to stay in cache
_CHUNK = 1 << 16

#: for each byte, how many of its four 2-bit fields hold 0, 1, 2 and 3 (codes -1, 0, +1; 3 is invalid)
FIELD_COUNTS = np.array(
    [[sum((b >> (2 * i)) & 3 == v for i in range(VALUES_PER_BYTE)) for v in range(4)] for b in range(256)],
    dtype=np.int64,
)


def _flat_bytes(packed: Any) -> np.ndarray:
    """Packed uint8 bytes (a numpy array, or a CPU tensor, which numpy views without a copy) as one flat array."""
    return np.ascontiguousarray(packed).reshape(-1)


def packed_code_counts(packed: Any, release: Callable[[int, int], None] | None = None) -> CodeCounts:
    """Counts of codes -1, 0, +1 and of invalid fields (3) in packed bytes, from a byte histogram.
    ``release`` is told of each chunk once counted (a mapped tensor hands its pages back there, a
    few MB at a time: see ``io.safetensors.page_release``)."""
    flat = _flat_bytes(packed)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        hist += np.bincount(flat[start : start + _CHUNK], minlength=256)
        if release is not None:
            release(start, min(start + _CHUNK, flat.size))
    minus, zero, plus, invalid = (int(v) for v in hist @ FIELD_COUNTS)
    return minus, zero, plus, invalid


def unpacked_chunks(packed: Any) -> Iterator[np.ndarray]:
    """The int8 codes of :func:`unpack_codes` in row-major order, a cache-sized chunk at a time.

    Plane ``i`` of the packed bytes is rows ``i*R/4 ..`` of the codes, so the planes in turn are
    the codes in order. Each chunk is a reused buffer: consume it before taking the next.
    """
    flat = _flat_bytes(packed)
    buf = np.empty(min(_CHUNK, flat.size), dtype=np.uint8)
    for plane in range(VALUES_PER_BYTE):
        for start in range(0, flat.size, _CHUNK):
            out = buf[: min(_CHUNK, flat.size - start)]
            np.right_shift(flat[start : start + _CHUNK], 2 * plane, out=out)
            np.bitwise_and(out, 3, out=out)
            np.subtract(out, 1, out=out)
            yield out.view(np.int8)


def code_counts(codes: np.ndarray) -> CodeCounts:
    """Counts of -1, 0, +1 and of anything else among int8 codes."""
    hist = np.bincount(np.ascontiguousarray(codes).reshape(-1).view(np.uint8), minlength=256)
    minus, zero, plus = int(hist[255]), int(hist[0]), int(hist[1])
    return minus, zero, plus, int(codes.size) - minus - zero - plus


def counts_stats(minus: int, zero: int, plus: int, invalid: int = 0) -> dict[str, float]:
    """Fractions of -1, 0 and +1 among all values, from counts."""
    n = (minus + zero + plus + invalid) or 1
    return {"minus": minus / n, "zero": zero / n, "plus": plus / n}


def float_code_counts(raw: np.ndarray, dtype_name: str, magnitude: int) -> CodeCounts | None:
    """Counts of -m, 0 and +m among float values stored as ``raw`` (``magnitude`` the word of m, which
    must be finite and positive), from their bits; None when any value is something else, or the
    magnitude is not finite and positive. -0 counts as 0."""
    v = value_item(magnitude.to_bytes(itemsize(dtype_name), "little"), dtype_name)
    if not 0 < v < float("inf"):
        return None
    word, _ = EXPONENT_BITS[dtype_name]
    sign = word(1 << (8 * np.dtype(word).itemsize - 1))
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(word)
    plus_word, minus_word = word(magnitude), word(magnitude) | sign
    plus = minus = zero = 0
    tmp = np.empty(min(_CHUNK, bits.size), dtype=word)
    for start in range(0, bits.size, _CHUNK):
        part = bits[start : start + _CHUNK]
        plus += int(np.count_nonzero(part == plus_word))
        minus += int(np.count_nonzero(part == minus_word))
        t = tmp[: part.size]
        np.bitwise_and(part, ~sign, out=t)
        zero += int(np.count_nonzero(t == 0))
        if plus + minus + zero != start + part.size:
            return None
    return minus, zero, plus, 0
