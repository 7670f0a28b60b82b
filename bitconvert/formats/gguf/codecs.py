"""Byte codecs for the GGML tensor types bitconvert reads and writes, in numpy.

Ternary codes travel as int8 arrays in {-1, 0, 1}, shape ``[rows, cols]`` (PyTorch order; a GGML
row is a PyTorch row, ``ne[0] = cols``). Block types cut each row into blocks along ``cols``; the
block size and bytes of every type are gguf-py's (``GGML_QUANT_SIZES``), read once below.

- TQ2_0: 256 values -> 64 bytes ``qs`` + fp16 ``d``. Value ``j`` of a block sits in byte
  ``(j // 128) * 32 + j % 32`` at shift ``2 * ((j % 128) // 32)``; stored code = t + 1.
- TQ1_0: 256 values -> 48 bytes ``qs`` + 4 bytes ``qh`` + fp16 ``d``; five trits per byte in base 3
  (first trit most significant), the byte stored as ``ceil(v * 256 / 243)`` so a trit is read back
  as ``((byte * 3**n) mod 256) * 3 >> 8``. ``qs[0:32]`` hold values ``m + 32n``, ``qs[32:48]`` hold
  ``160 + m + 16n``, ``qh[0:4]`` hold ``240 + j + 4m`` (four trits, times 3).
- I2_S: its three byte layouts live in ``i2s_layouts.py``; the 2-bit plane packer they share
  (:func:`encode_planes_rows`) and the code-3 check are here.

Pure functions: no files. Encoders trust their codes to be in {-1, 0, 1}; decoders read a stored
code 3 (invalid) as 2, and a TQ1_0 byte that no trits encode as some trits, so callers reject such
bytes first with the checks at the end (:func:`first_code_3`, :func:`tq1_0_first_noncanonical`).
Which function serves which GGML type is recorded once, in ``types.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ...dtypes import Dense
from ...ternary.fast import jit, workers

_Q = GGMLQuantizationType
#: values per TQ block (ggml's QK_K) and the bytes of a TQ2_0 / TQ1_0 block: the one place they are read
QK_K, TQ2_0_BYTES = GGML_QUANT_SIZES[_Q.TQ2_0]
TQ1_0_BYTES = GGML_QUANT_SIZES[_Q.TQ1_0][1]
QK8_0, Q8_0_BYTES = GGML_QUANT_SIZES[_Q.Q8_0]
#: bytes of a TQ block before its fp16 d
TQ2_0_QS = TQ2_0_BYTES - 2
TQ1_0_QS = TQ1_0_BYTES - 2


# --- byte lanes ------------------------------------------------------------------------------------
# Codes are packed eight at a time: a uint8 array viewed as uint64 words holds eight byte lanes,
# and as long as no lane leaves 0..255 (2-bit fields) one word operation does the work of eight.

_ONES = 0x0101010101010101
_LOW7 = 0x7F7F7F7F7F7F7F7F
_HIGH = 0x8080808080808080


def _d_bytes(d: np.ndarray | float, rows: int, nblocks: int) -> np.ndarray:
    """fp16 ``d`` per block as little-endian bytes ``[rows, nblocks, 2]`` (a broadcast view for one ``d``).

    ``d`` is rounded to float32 first, then to fp16, as ggml's writers (and torch) round it."""
    d16 = np.asarray(d, dtype=np.float32).astype("<f2")
    if d16.size == 1:
        return np.broadcast_to(d16.reshape(1).view(np.uint8), (rows, nblocks, 2))
    return np.ascontiguousarray(d16.reshape(rows, nblocks)).view(np.uint8).reshape(rows, nblocks, 2)


#: values per encoding step: small enough to stay in cache
_STEP_VALUES = 1 << 16


def _code_bytes(codes: np.ndarray, block: int) -> np.ndarray:
    """int8 codes ``[R, C]`` as their bytes (code mod 256: -1 is 255), ``[R, C / block, block]``."""
    if codes.ndim != 2 or codes.shape[1] % block:
        raise ValueError(f"rows of {block}-value blocks expected, got shape {tuple(codes.shape)}")
    raw = np.ascontiguousarray(codes, dtype=np.int8).view(np.uint8)
    return raw.reshape(codes.shape[0], codes.shape[1] // block, block)


#: ``code_rows(r0, r1)`` -> the code bytes of rows ``r0:r1`` (uint8 mod 256, ``[r1 - r0, C]``), valid
#: until the thread's next call (it is called from two threads at once, for disjoint rows): how the
#: ``*_rows`` encoders take codes that never exist as one array.
CodeRows = Callable[[int, int], np.ndarray]


def _stored_lanes(code_bytes: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Code bytes (mod 256, size % 8 == 0) -> stored codes t + 1 in ``out``, as uint64 words of 8 lanes."""
    x = np.ascontiguousarray(code_bytes).reshape(-1).view(np.uint64)
    np.bitwise_and(x, np.uint64(_LOW7), out=out)
    out += np.uint64(_ONES)
    np.bitwise_and(x, np.uint64(_HIGH), out=tmp)
    out ^= tmp  # lane-wise +1: the low 7 bits of each lane plus 1 never carry, the sign bit goes back by xor
    return out


def _row_steps(rows: int, values_per_row: int) -> list[tuple[int, int]]:
    step = max(1, _STEP_VALUES // max(values_per_row, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


#: steps below which a tensor is encoded on the calling thread alone (a helper costs more there)
_SPLIT_MIN_STEPS = 16


def _split(steps: list[tuple[int, int]], encode: Callable[[list[tuple[int, int]]], None]) -> None:
    """``encode`` over the steps, cut into one share per core (:func:`bitconvert.ternary.fast.workers.split_map`;
    numpy releases the GIL in its loops). Rows are disjoint, so the bytes do not depend on it."""
    parts = workers.spans(len(steps), workers.cores() if len(steps) >= _SPLIT_MIN_STEPS else 1)
    workers.split_map(lambda span: encode(steps[span[0] : span[1]]), parts)


def _view(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` reshaped without copying (writes must land in ``a``): numpy refuses where it cannot."""
    v = a.view()
    v.shape = shape
    return v


def encode_planes_rows(
    code_rows: CodeRows,
    rows: int,
    cols: int,
    block: int,
    shifts: tuple[int, ...],
    into: Callable[[int, int], np.ndarray],
) -> None:
    """Rows of codes packed four to a byte: each ``block`` of a row is four planes of ``block / 4``
    values, plane i at bit ``shifts[i]`` of the block's ``block / 4`` bytes (``cols % block == 0``,
    ``block % 32 == 0``); ``into(r0, r1)`` is the view (any shape, row-major per row) the rows'
    bytes go to. Stored codes t + 1 are packed in 64-bit words of eight byte lanes."""
    words = block // 32  # per plane
    compiled = jit.kernels(rows * cols)
    kernel = compiled.pack_code_planes if compiled is not None else None
    if kernel is not None:  # the same bytes, one compiled pass instead of the word arithmetic below

        def encode(steps: list[tuple[int, int]]) -> None:
            for r0, r1 in steps:
                target = into(r0, r1)
                halves = target.shape[-1] // (block // 4)
                grid = _view(target, (r1 - r0, cols // block // halves, halves, block // 4))
                kernel(code_rows(r0, r1).reshape(r1 - r0, cols), *shifts, grid)

        _split(_row_steps(rows, cols), encode)
        return

    def encode(steps: list[tuple[int, int]]) -> None:
        lanes = np.empty((3, (steps[0][1] - steps[0][0]) * cols // 8), dtype=np.uint64)  # stored, scratch, packed
        for r0, r1 in steps:
            n = (r1 - r0) * cols // 8
            stored = _stored_lanes(code_rows(r0, r1), lanes[0, :n], lanes[1, :n])
            planes = stored.reshape(r1 - r0, cols // block, 4, words)
            packed, scratch = (_view(lanes[i, : n // 4], (r1 - r0, cols // block, words)) for i in (2, 1))
            np.left_shift(planes[:, :, 0], np.uint64(shifts[0]), out=packed)
            for plane in (1, 2, 3):  # fields of 0..2 shifted by at most 6 stay inside their byte lane
                np.left_shift(planes[:, :, plane], np.uint64(shifts[plane]), out=scratch)
                packed |= scratch
            target = into(r0, r1)
            target[...] = packed.view(np.uint8).reshape(target.shape)

    _split(_row_steps(rows, cols), encode)


# --- TQ2_0 ----------------------------------------------------------------------------------------


def encode_tq2_0(codes: np.ndarray, d: np.ndarray | float = 1.0) -> np.ndarray:
    """int8 codes ``[R, C]`` (C % 256 == 0) -> uint8 ``[R, C/256 * 66]``; ``d`` scalar or per block."""
    c = _code_bytes(codes, QK_K)
    return encode_tq2_0_rows(lambda r0, r1: c[r0:r1], c.shape[0], c.shape[1] * QK_K, d)


def encode_tq2_0_rows(code_rows: CodeRows, rows: int, cols: int, d: np.ndarray | float = 1.0) -> np.ndarray:
    """:func:`encode_tq2_0` of codes handed out a few rows at a time by ``code_rows`` (see CodeRows)."""
    nb = cols // QK_K
    out = np.empty((rows, nb, TQ2_0_BYTES), dtype=np.uint8)
    # each 256-value block is two 128-value halves of four 32-value planes, plane i at shift 2i
    encode_planes_rows(code_rows, rows, cols, QK_K // 2, (0, 2, 4, 6), lambda r0, r1: out[r0:r1, :, :TQ2_0_QS])
    out[:, :, TQ2_0_QS:] = _d_bytes(d, rows, nb)
    return out.reshape(rows, nb * TQ2_0_BYTES)


_TQ2_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)


def decode_tq2_0(raw: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[R, C/256 * 66]`` -> (int8 codes ``[R, C]`` with stored code 3 as 2, fp16 d ``[R, C/256]``)."""
    rows, nb = raw.shape[0], cols // QK_K
    b = raw.reshape(rows, nb, TQ2_0_BYTES)
    qs = b[:, :, :TQ2_0_QS].reshape(rows, nb, 2, 1, QK_K // 8)  # [row, block, half, plane, lane]
    fields = (qs >> _TQ2_SHIFTS) & 3
    fields -= 1  # uint8 wraps: stored 0 becomes 255, which is -1 as int8
    d = np.ascontiguousarray(b[:, :, TQ2_0_QS:]).view("<f2").reshape(rows, nb)
    return fields.view(np.int8).reshape(rows, cols), d


def tq2_0_raw_codes(raw: np.ndarray, cols: int) -> np.ndarray:
    """The 2-bit fields of a TQ2_0 tensor, uint8 ``[R, C/256, 64]``, for validity checks."""
    return raw.reshape(raw.shape[0], cols // QK_K, TQ2_0_BYTES)[:, :, :TQ2_0_QS]


# --- TQ1_0 ----------------------------------------------------------------------------------------

#: per byte: its trits as codes, ``((byte * 3**n) mod 256) * 3 >> 8`` - 1 for n = 0..4 (qh bytes use the first four)
_TRIT_CODES = np.array(
    [[((((b * 3**n) & 0xFF) * 3) >> 8) - 1 for n in range(5)] for b in range(256)], dtype=np.int8
)
#: byte stored for a base-3 value v (0..242): ceil(v * 256 / 243)
TQ1_BYTE = ((np.arange(243) * 256 + 242) // 243).astype(np.uint8)
_TQ1_BYTE_256 = np.concatenate([TQ1_BYTE, np.zeros(13, dtype=np.uint8)])  # indexable by any byte


def encode_tq1_0(codes: np.ndarray, d: np.ndarray | float = 1.0) -> np.ndarray:
    """int8 codes ``[R, C]`` (C % 256 == 0) -> uint8 ``[R, C/256 * 54]``; ``d`` scalar or per block."""
    c = _code_bytes(codes, QK_K)
    return encode_tq1_0_rows(lambda r0, r1: c[r0:r1], c.shape[0], c.shape[1] * QK_K, d)


def encode_tq1_0_rows(code_rows: CodeRows, rows: int, cols: int, d: np.ndarray | float = 1.0) -> np.ndarray:
    """:func:`encode_tq1_0` of codes handed out a few rows at a time by ``code_rows`` (see CodeRows)."""
    nb = cols // QK_K
    out = np.empty((rows, nb, TQ1_0_BYTES), dtype=np.uint8)

    def encode(steps: list[tuple[int, int]]) -> None:
        for r0, r1 in steps:
            x, o = code_rows(r0, r1).reshape(r1 - r0, nb, QK_K), out[r0:r1]
            # base-3 digits weighted 81, 27, 9, 3 (, 1): stored codes c + 1 sum to at most 242, and the
            # +1s add 121 (or 120) in total, so the byte arithmetic below never needs more than 8 bits
            _base3(x[:, :, :160].reshape(r1 - r0, nb, 5, 32), (81, 27, 9, 3, 1), o[:, :, :32])
            _base3(x[:, :, 160:240].reshape(r1 - r0, nb, 5, 16), (81, 27, 9, 3, 1), o[:, :, 32:48])
            _base3(x[:, :, 240:].reshape(r1 - r0, nb, 4, 4), (81, 27, 9, 3), o[:, :, 48:TQ1_0_QS])
            np.take(_TQ1_BYTE_256, o[:, :, :TQ1_0_QS], out=o[:, :, :TQ1_0_QS])

    _split(_row_steps(rows, cols), encode)
    out[:, :, TQ1_0_QS:] = _d_bytes(d, rows, nb)
    return out.reshape(rows, nb * TQ1_0_BYTES)


def _base3(digits: np.ndarray, weights: tuple[int, ...], out: np.ndarray) -> None:
    """out = sum of (code + 1) * weight over axis 2 of ``digits`` (code bytes), mod 256."""
    np.multiply(digits[:, :, 0], weights[0], out=out)
    tmp = np.empty_like(out)
    for i, w in enumerate(weights[1:], start=1):
        np.multiply(digits[:, :, i], w, out=tmp)
        out += tmp
    out += sum(weights)


def decode_tq1_0(raw: np.ndarray, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[R, C/256 * 54]`` -> (int8 codes ``[R, C]``, fp16 d ``[R, C/256]``).

    A byte that is no valid encoding decodes to some trits anyway; :func:`tq1_0_first_noncanonical`
    finds such bytes (re-encoding their trits would give different bytes).
    """
    rows, nb = raw.shape[0], cols // QK_K
    b = raw.reshape(rows, nb, TQ1_0_BYTES)
    codes = np.empty((rows, nb, QK_K), dtype=np.int8)
    # each group's bytes give their trits, [..., byte, n]; value m + k*n of a group is trit n of byte m
    for (lo, hi), (v0, v1), trits in (((0, 32), (0, 160), 5), ((32, 48), (160, 240), 5), ((48, 52), (240, 256), 4)):
        group = _view(codes[:, :, v0:v1], (rows, nb, trits, hi - lo))
        group[...] = _TRIT_CODES[b[:, :, lo:hi], :trits].swapaxes(-1, -2)
    d = np.ascontiguousarray(b[:, :, TQ1_0_QS:]).view("<f2").reshape(rows, nb)
    return codes.reshape(rows, cols), d


# --- Q8_0 -----------------------------------------------------------------------------------------


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C ``roundf``: halves away from zero, exact for every float32 (no ``+0.5`` rounding slip)."""
    a = np.abs(x)
    f = np.floor(a)
    return np.sign(x) * (f + np.floor(2 * (a - f)))


def encode_q8_0(x: Dense) -> np.ndarray:
    """float ``[R, C]`` (C % 32 == 0) -> uint8 ``[R, C/32 * 34]``, byte-identical to ggml's reference."""
    rows, cols = x.shape
    nb = cols // QK8_0
    b = x.float32().reshape(rows, nb, QK8_0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
        q = _round_half_away(b * inv).astype(np.int8)
    out = np.empty((rows, nb, Q8_0_BYTES), dtype=np.uint8)
    out[:, :, :2] = d.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(rows, nb * Q8_0_BYTES)


def decode_q8_0(raw: np.ndarray, cols: int) -> Dense:
    """uint8 ``[R, C/32 * 34]`` -> float32 values ``[R, C]`` (d x q, as ggml dequantizes)."""
    rows, nb = raw.shape[0], cols // QK8_0
    b = raw.reshape(rows, nb, Q8_0_BYTES)
    d = np.ascontiguousarray(b[:, :, :2]).view("<f2").astype(np.float32)
    q = np.ascontiguousarray(b[:, :, 2:]).view(np.int8).astype(np.float32)
    return Dense((q * d).reshape(rows, cols), "F32")


# --- checks ---------------------------------------------------------------------------------------


def first_code_3(fields: np.ndarray) -> int | None:
    """Index (in bytes of ``fields``, flattened) of the first byte holding a 2-bit field equal to 3."""
    flat = np.ascontiguousarray(fields).reshape(-1)
    bad = (flat & (flat >> 1)) & 0x55
    if not bad.any():
        return None
    return int(np.argmax(bad != 0))


#: The bytes :func:`encode_tq1_0` can produce: ``ceil(v * 256 / 243)`` for a base-3 value v of five
#: trits in ``qs``; in ``qh`` only four trits are stored (times 3), so v is a multiple of 3 there.
TQ1_QS_OK = np.zeros(256, dtype=bool)
TQ1_QS_OK[TQ1_BYTE] = True
TQ1_QH_OK = np.zeros(256, dtype=bool)
TQ1_QH_OK[TQ1_BYTE[::3]] = True


def tq1_0_first_noncanonical(raw: np.ndarray, cols: int) -> int | None:
    """Row of the first TQ1_0 block holding a ``qs``/``qh`` byte that no five (four) trits encode.

    Such a byte decodes to plausible trits whose re-encoding differs, so the file was not written
    by a TQ1_0 encoder: reject it rather than load made-up codes.
    """
    b = raw.reshape(raw.shape[0], cols // QK_K, TQ1_0_BYTES)
    bad = ~TQ1_QS_OK[b[:, :, :48]].all(-1) | ~TQ1_QH_OK[b[:, :, 48:TQ1_0_QS]].all(-1)
    rows = bad.any(-1)
    return int(np.argmax(rows)) if rows.any() else None


# --- float types ----------------------------------------------------------------------------------


def encode_float(x: Dense, dtype_name: str) -> np.ndarray:
    """Float values as stored by F32 / F16 / BF16 (rounded once, to nearest, as torch rounds), flat bytes."""
    return x.to(dtype_name).raw()


def decode_float(raw: np.ndarray, cols: int, dtype_name: str) -> Dense:
    """uint8 ``[R, C * itemsize]`` -> ``[R, C]`` of ``dtype_name``, as stored (a view where ``raw`` is contiguous)."""
    return Dense.from_bytes(np.ascontiguousarray(raw), dtype_name, (raw.shape[0], cols))
