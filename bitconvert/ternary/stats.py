"""Statistics, validity and row-major codes of packed 2-bit ternary bytes, without unpacking them.

The HF row-block layout (:func:`bitconvert.ternary.pack_codes`) keeps four codes per byte, so a
256-entry table over byte values counts codes, and invalid fields (3), from a byte histogram;
row-major codes come out one plane at a time in cache-sized chunks. Pure numpy on bytes.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

#: four 2-bit codes per byte (as ``ternary.VALUES_PER_BYTE``; numpy only here, no torch import)
VALUES_PER_BYTE = 4

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


def packed_code_counts(packed: Any) -> tuple[int, int, int, int]:
    """Counts of codes -1, 0, +1 and of invalid fields (3) in packed bytes, from a byte histogram."""
    flat = _flat_bytes(packed)
    hist = np.zeros(256, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        hist += np.bincount(flat[start : start + _CHUNK], minlength=256)
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


def counts_stats(minus: int, zero: int, plus: int, invalid: int = 0) -> dict[str, float]:
    """Fractions of -1, 0 and +1 among all values, from counts (as ``ternary.ternary_stats`` gives them)."""
    n = (minus + zero + plus + invalid) or 1
    return {"minus": minus / n, "zero": zero / n, "plus": plus / n}
