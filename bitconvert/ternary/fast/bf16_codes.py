"""Ternary codes straight from bf16 bit patterns, with the recipe's exact results.

For a bf16 weight and its scale ``s = 1/mean|W|``, transformers' recipe gives code
``clamp(round(x * s), -1, 1)`` in float32. That code only depends on whether ``|x|`` lies above
one bf16 magnitude (:func:`zero_threshold`), so codes come from integer comparisons on the bit
patterns, a cache-sized chunk at a time, split over the cores (:mod:`bitconvert.ternary.fast.workers`): no
float32 or int8 copy of the weight exists at any time. Where numba is installed the same
comparisons run as one compiled loop (:mod:`bitconvert.ternary.fast.jit`). Pure math, no I/O.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from . import jit
from .summation import Release
from .workers import cores, spans, split_map

#: elements per step when mapping a weight to codes: small enough to stay in cache
CHUNK = 1 << 16
#: bf16 bit patterns 0 .. 0x7F7F are the finite non-negative values; 0x7F80 is +inf
_FINITE_BF16 = 0x7F80


def recipe_codes(x: np.ndarray, inv: np.float32) -> np.ndarray:
    """The recipe's arithmetic on float32 values: round-half-even(x * s) clamped to [-1, 1]."""
    with np.errstate(over="ignore"):  # the largest values overflow to inf: code 1, as in torch
        return np.clip(np.rint(np.asarray(x, dtype=np.float32) * np.float32(inv)), -1, 1)


def zero_threshold(inv: np.float32) -> int | None:
    """The largest bf16 magnitude (as bits) whose code is 0, when codes step there; else None.

    Codes are odd and non-decreasing in x (float32 multiplication by ``s > 0`` and rounding are
    monotone and symmetric), so comparing bit patterns with this threshold gives the recipe's
    codes for every finite input. The step is found by running the recipe's float32 arithmetic
    over every finite bf16 value (IEEE operations: the results torch gives).
    """
    x = (np.arange(_FINITE_BF16, dtype=np.uint32) << 16).view(np.float32)
    pos = recipe_codes(x, inv)
    zeros = int(np.count_nonzero(pos == 0))
    if not (pos[:zeros] == 0).all() or not (pos[zeros:] == 1).all():
        return None
    if not (recipe_codes(-x, inv) == -pos).all():
        return None
    return zeros - 1


def _codes_into(bits: np.ndarray, threshold: int, out: np.ndarray, tmp: np.ndarray) -> None:
    """Codes of finite bf16 bit patterns as uint8 mod 256 (255 is -1), into ``out``.

    code = [bits > t] - [negative] - [negative and magnitude > t]: positive values above the
    threshold give 1, negative ones 1 - 1 - 1 = -1, everything else 0.
    """
    np.greater(bits, threshold, out=out.view(np.bool_))
    np.greater(bits, 0x7FFF, out=tmp.view(np.bool_))
    np.subtract(out, tmp, out=out)
    np.greater(bits, 0x8000 + threshold, out=tmp.view(np.bool_))
    np.subtract(out, tmp, out=out)


def codes_into(bits: np.ndarray, threshold: int, out: np.ndarray) -> None:
    """Codes (uint8 mod 256) of flat finite bf16 bit patterns into the flat ``out``."""

    compiled = jit.kernels(bits.size)
    kernel = compiled.codes_flat if compiled is not None else None

    def part(span: tuple[int, int]) -> None:
        if kernel is not None:
            return kernel(bits, threshold, out, span[0], span[1])
        tmp = np.empty(min(CHUNK, span[1] - span[0]), dtype=np.uint8)
        for start in range(span[0], span[1], CHUNK):
            stop = min(start + CHUNK, span[1])
            _codes_into(bits[start:stop], threshold, out[start:stop], tmp[: stop - start])

    split_map(part, spans(bits.size, cores(), CHUNK))


def pack_planes(
    planes: np.ndarray, threshold: int, out: np.ndarray, release: Release | None = None, first: int = 0
) -> None:
    """Packed row-block bytes of ``planes`` ([4, R/4, C] bit patterns) into ``out``: its rows are
    packed rows ``first .. first + len(out)`` (all ``R/4`` of them by default).

    Byte [r, c] = sum over planes i of (code + 1) << 2i, computed mod 256 a few rows at a time.
    ``release`` (flat indices of ``planes``) is told of each block of rows once it is packed.
    """
    quarter, cols = planes.shape[1:]
    step = max(1, CHUNK // (4 * max(cols, 1)))

    compiled = jit.kernels(planes.size)
    kernel = compiled.pack_rows if compiled is not None else None
    batch = max(step, (1 << 18) // max(cols, 1))  # rows per compiled call: 4 planes of about 512 KB

    def done(r0: int, r1: int) -> None:
        if release is not None:
            for plane in range(4):
                release((plane * quarter + r0) * cols, (plane * quarter + r1) * cols)

    def part(span: tuple[int, int]) -> None:
        if kernel is not None:
            for r0 in range(span[0], span[1], batch):
                r1 = min(r0 + batch, span[1])
                kernel(planes, threshold, out, r0, r1, first)
                done(r0, r1)
            return
        codes = np.empty((4, min(step, span[1] - span[0]), cols), dtype=np.uint8)
        tmp = np.empty_like(codes)
        for r0 in range(span[0], span[1], step):
            r1 = min(r0 + step, span[1])
            c, t = codes[:, : r1 - r0], tmp[:, : r1 - r0]
            _codes_into(planes[:, r0:r1], threshold, c, t)
            o = out[r0 - first : r1 - first]
            np.left_shift(c[3], 6, out=o)
            for plane in (2, 1):
                np.left_shift(c[plane], 2 * plane, out=t[0])
                o += t[0]
            o += c[0]
            o += 0x55  # the +1 of every plane: 1 + 4 + 16 + 64
            done(r0, r1)

    split_map(part, [(first + a, first + b) for a, b in spans(len(out), cores(), step)])


def bf16_code_rows(
    bits: np.ndarray, threshold: int, order: np.ndarray | None = None, release: Release | None = None
) -> Callable[[int, int], np.ndarray]:
    """``rows(r0, r1)``: the codes of rows ``r0:r1`` of the 2-D bf16 words ``bits`` as uint8 mod 256
    (255 is -1), the codes :func:`~bitconvert.ternary.quantize.absmean_quantize` gives, for ``threshold``
    from :func:`~bitconvert.ternary.quantize.bf16_scale_threshold`. With ``order``, output row ``r`` holds the
    codes of input row ``order[r]``. Each call reuses its thread's buffer: consume it before that
    thread's next call. ``release`` (flat indices of ``bits``) is told of the rows each call has read.
    """
    if bits.dtype != np.uint16 or bits.ndim != 2:
        raise ValueError(f"bf16_code_rows expects 2-D bf16 words, got {bits.dtype} {tuple(bits.shape)}")
    cols = bits.shape[1]
    local = threading.local()  # one buffer per calling thread
    compiled = jit.kernels(bits.size)  # the same comparisons as one compiled loop, where numba is
    kernel = compiled.codes_flat if compiled is not None else None

    def rows(r0: int, r1: int) -> np.ndarray:
        n = (r1 - r0) * cols
        held = getattr(local, "held", None)
        if held is None or held[0].size < n:
            held = local.held = (np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.uint8))
        out, tmp = (b[:n].reshape(r1 - r0, cols) for b in held)
        src = bits[r0:r1] if order is None else bits[order[r0:r1]]
        if kernel is not None:
            kernel(src.reshape(-1), threshold, out.reshape(-1), 0, n)
        else:
            _codes_into(src, threshold, out, tmp)
        if release is not None:
            read = (r0, r1) if order is None else (int(order[r0:r1].min()), int(order[r0:r1].max()) + 1)
            release(read[0] * cols, read[1] * cols)
        return out

    return rows
