"""Compiled loops for the bf16 fast paths: one pass over each weight instead of a dozen numpy passes.

:mod:`bitconvert.ternary.fast.summation` (torch's float32 summation order) and :mod:`bitconvert.ternary.fast.bf16_codes`
(codes from bit patterns) are written in numpy, and that is the definition; the functions here do
the same arithmetic in the same order, compiled by numba (a wheel from the package registry; no
compiler at install time; the machine code is cached on disk after the first run). Where numba is
missing, :func:`kernels` gives None and callers stay on numpy. Set ``BITCONVERT_NO_JIT=1`` to
force that (the tests run both paths).

Every loop adds float32 values per lane in exactly the numpy version's order; numba never
reassociates floating-point additions unless asked (``fastmath`` is off), so results are bit-identical.
"""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np

_lock = threading.Lock()
_loaded: list[SimpleNamespace | None] = []

#: below this many values numpy is done before numba has loaded its cache (about half a second)
MIN_VALUES = 1 << 20


def kernels(values: int | None = None) -> SimpleNamespace | None:
    """The compiled functions (``range_abs_sum``, ``pack_rows``, ``codes_flat``,
    ``pack_code_planes``), or None where
    numba is missing, ``BITCONVERT_NO_JIT`` is set, or ``values`` (the size of the job) is too small
    to pay for loading them. numba is imported on the first call that uses it, so commands that
    never quantize a large weight do not pay for it."""
    if values is not None and values < MIN_VALUES:
        return None
    with _lock:
        if not _loaded:
            _loaded.append(_compile_all())
        return _loaded[0]


def _compile_all() -> SimpleNamespace | None:
    if os.environ.get("BITCONVERT_NO_JIT"):
        return None
    try:
        from numba import njit
    except ImportError:  # numba missing: numpy does the work
        return None
    try:
        jit = njit(nogil=True, cache=True, error_model="numpy")
        # the helpers first: a compiled function resolves the functions it calls from these globals
        globals()["_add_abs_rows"] = jit(_add_abs_rows)
        globals()["_block_sums"] = jit(_block_sums)
        found = SimpleNamespace(
            range_abs_sum=jit(_range_abs_sum),
            pack_rows=jit(_pack_rows),
            codes_flat=jit(_codes_flat),
            pack_code_planes=jit(_pack_code_planes),
        )
        _warm_up(found)
    except Exception:  # no cache location, an LLVM that refuses: numpy gives the same results
        return None
    return found


def _warm_up(k: SimpleNamespace) -> None:
    """Compile (or load from the cache) for the argument types the callers pass, once, here."""
    bits = np.zeros(64, dtype=np.uint16)
    k.range_abs_sum(bits, 0, 64, 8, 16, 4)
    k.pack_rows(bits.reshape(4, 2, 8), 1, np.empty((2, 8), dtype=np.uint8), 0, 2)
    k.codes_flat(bits, 1, np.empty(64, dtype=np.uint8), 0, 64)
    codes = np.zeros((2, 256), dtype=np.uint8)
    k.pack_code_planes(codes, 0, 2, 4, 6, np.empty((2, 1, 66), dtype=np.uint8)[:, :, :64].reshape(2, 1, 2, 32))  # GGUF TQ2_0
    k.pack_code_planes(codes, 6, 4, 2, 0, np.empty((2, 64), dtype=np.uint8).reshape(2, 2, 1, 32))  # I2_S


def _add_abs_rows(bits, first, count, cols, words, floats, acc):
    """acc += |row| for ``count`` rows of ``cols`` bf16 values from flat index ``first``, in row order.

    ``words``/``floats`` are one scratch buffer seen as uint32 and float32: a batch of rows is
    widened there in one loop (numba has no scalar bit cast), then added row by row.
    """
    batch = words.size // cols
    for r0 in range(0, count, batch):
        n = min(batch, count - r0) * cols
        src = bits[first + r0 * cols : first + r0 * cols + n]  # a slice: plain loops LLVM vectorizes
        for i in range(n):
            words[i] = np.uint32(src[i] & 0x7FFF) << np.uint32(16)
        for r in range(n // cols):
            row = floats[r * cols : (r + 1) * cols]
            for c in range(cols):
                acc[c] += row[c]


def _block_sums(bits, first, rows, step, cols, words, floats, out):
    """out[k] = the sequential sum of rows k*step .. k*step+step-1 (each row: |x| of ``cols`` values)."""
    acc = np.empty(cols, dtype=np.float32)
    for k in range(rows // step):
        acc[:] = 0
        _add_abs_rows(bits, first + k * step * cols, step, cols, words, floats, acc)
        out[k, :] = acc


def _range_abs_sum(bits, begin, end, lanes, step, ilp):
    """torchsum's ``_range_sum`` over |bf16| patterns, in the same order (see there for the levels)."""
    n = end - begin
    vec_count = n // lanes
    rows = vec_count // ilp
    cols = ilp * lanes
    group = step * step
    full = rows // group * group
    words = np.zeros(64 * cols, dtype=np.uint32)
    floats = words.view(np.float32)
    level1 = np.empty((step, cols), dtype=np.float32)
    level2 = np.zeros((max(full // group, 1), cols), dtype=np.float32)
    for g in range(full // group):
        _block_sums(bits, begin + g * group * cols, group, step, cols, words, floats, level1)
        for k in range(step):
            for c in range(cols):
                level2[g, c] += level1[k, c]
    # rows after the last whole group: whole blocks into acc1, the remaining rows into acc0
    rest = rows - full
    blocks = rest // step
    acc1 = np.zeros(cols, dtype=np.float32)
    acc0 = np.zeros(cols, dtype=np.float32)
    if blocks:
        partials = np.empty((blocks, cols), dtype=np.float32)
        _block_sums(bits, begin + full * cols, blocks * step, step, cols, words, floats, partials)
        for k in range(blocks):
            for c in range(cols):
                acc1[c] += partials[k, c]
    _add_abs_rows(bits, begin + (full + blocks * step) * cols, rest - blocks * step, cols, words, floats, acc0)
    # the level-2 partials fold the same way: whole blocks of ``step`` into acc3, the rest into acc2
    n2 = full // group
    n3 = n2 // step
    acc3 = np.zeros(cols, dtype=np.float32)
    acc2 = np.zeros(cols, dtype=np.float32)
    inner = np.empty(cols, dtype=np.float32)
    for k in range(n3):
        inner[:] = 0
        for j in range(step):
            for c in range(cols):
                inner[c] += level2[k * step + j, c]
        for c in range(cols):
            acc3[c] += inner[c]
    for k in range(n3 * step, n2):
        for c in range(cols):
            acc2[c] += level2[k, c]
    partial = np.empty(cols, dtype=np.float32)
    for c in range(cols):
        partial[c] = ((acc0[c] + acc1[c]) + acc2[c]) + acc3[c]
    # leftover whole vectors go to the first accumulator, then the accumulators are added
    for v in range(rows * ilp, vec_count):
        for lane in range(lanes):
            words[lane] = np.uint32(bits[begin + v * lanes + lane] & 0x7FFF) << np.uint32(16)
        for lane in range(lanes):
            partial[lane] += floats[lane]
    vec = np.zeros(lanes, dtype=np.float32)
    for lane in range(lanes):
        vec[lane] = partial[lane]
    for k in range(1, ilp):
        for lane in range(lanes):
            vec[lane] += partial[k * lanes + lane]
    total = np.float32(0)
    for i in range(begin + vec_count * lanes, end):
        words[0] = np.uint32(bits[i] & 0x7FFF) << np.uint32(16)
        total = np.float32(total + floats[0])
    for lane in range(lanes):
        total = np.float32(total + vec[lane])
    return total


def _pack_rows(planes, threshold, out, r0, r1):
    """Packed row-block bytes for rows r0..r1 of ``out``: sum over planes i of (code + 1) << 2i."""
    hi = np.uint16(0x8000 + threshold)
    t = np.uint16(threshold)
    neg = np.uint16(0x7FFF)
    for r in range(r0, r1):
        o = out[r]
        p0, p1, p2, p3 = planes[0, r], planes[1, r], planes[2, r], planes[3, r]
        for c in range(o.size):
            byte = np.uint8(0x55)  # the +1 of every plane
            byte += np.uint8(p0[c] > t) - np.uint8(p0[c] > neg) - np.uint8(p0[c] > hi)
            byte += (np.uint8(p1[c] > t) - np.uint8(p1[c] > neg) - np.uint8(p1[c] > hi)) << np.uint8(2)
            byte += (np.uint8(p2[c] > t) - np.uint8(p2[c] > neg) - np.uint8(p2[c] > hi)) << np.uint8(4)
            byte += (np.uint8(p3[c] > t) - np.uint8(p3[c] > neg) - np.uint8(p3[c] > hi)) << np.uint8(6)
            o[c] = byte


def _pack_code_planes(codes, s0, s1, s2, s3, out):
    """Code bytes ``[R, C]`` (mod 256) packed four to a byte into ``out`` ``[R, G, H, Q]``: each
    block of ``4 Q`` values of a row is four planes of Q values, plane i's code + 1 at bit ``s_i``
    of the block's Q bytes; the row's blocks fill ``out[r]`` in (G, H) order."""
    rows, groups, halves, q = out.shape
    for r in range(rows):
        crow = codes[r]
        for g in range(groups):
            for h in range(halves):
                base = (g * halves + h) * 4 * q
                p0, p1, p2, p3 = crow[base : base + q], crow[base + q : base + 2 * q], crow[base + 2 * q : base + 3 * q], crow[base + 3 * q : base + 4 * q]
                o = out[r, g, h]
                for k in range(q):
                    o[k] = (
                        (((p0[k] + 1) & 3) << s0)
                        | (((p1[k] + 1) & 3) << s1)
                        | (((p2[k] + 1) & 3) << s2)
                        | (((p3[k] + 1) & 3) << s3)
                    )


def _codes_flat(bits, threshold, out, start, stop):
    """Codes (uint8 mod 256, 255 is -1) of flat bf16 patterns start..stop into ``out``."""
    hi = np.uint16(0x8000 + threshold)
    t = np.uint16(threshold)
    neg = np.uint16(0x7FFF)
    src, dst = bits[start:stop], out[start:stop]
    for i in range(src.size):
        v = src[i]
        dst[i] = np.uint8(v > t) - np.uint8(v > neg) - np.uint8(v > hi)
