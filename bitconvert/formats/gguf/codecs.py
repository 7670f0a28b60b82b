"""Byte codecs for the GGML tensor types bitconvert reads and writes, vectorized in torch.

Ternary codes travel as int8 tensors in {-1, 0, 1}, shape ``[rows, cols]`` (PyTorch order; a GGML
row is a PyTorch row, ``ne[0] = cols``). Block types cut each row into blocks along ``cols``.

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

from typing import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ...ternary.fast import jit, workers
from .blocks import QK_K  # noqa: F401  (re-exported)

QK8_0 = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]


# --- byte lanes ------------------------------------------------------------------------------------
# Codes are packed and unpacked eight at a time: a uint8 tensor viewed as int64 words holds eight
# byte lanes, and as long as no lane leaves 0..255 (2-bit fields, base-3 digits up to 242) one word
# operation does the work of eight byte operations.

_ONES = 0x0101010101010101
_LOW7 = 0x7F7F7F7F7F7F7F7F
_HIGH = 0x8080808080808080 - (1 << 64)  # as a signed int64
_TWO_BITS = 0x0303030303030303


def _minus_one(words: torch.Tensor) -> torch.Tensor:
    """Lane-wise stored code (0..3) - 1, as int8: 0 -> -1, 1 -> 0, 2 -> 1 (3 -> 2, rejected by callers)."""
    return (((words | _HIGH) - _ONES) ^ _HIGH).view(torch.int8)


def _d_bytes(d: torch.Tensor | float, rows: int, nblocks: int) -> np.ndarray:
    """fp16 ``d`` per block as little-endian bytes ``[rows, nblocks, 2]`` (a broadcast view for one ``d``)."""
    d16 = torch.as_tensor(d, dtype=torch.float32).to(torch.float16)
    if d16.numel() == 1:  # no full-size torch tensor: filling one would wake torch's thread pool
        return np.broadcast_to(d16.reshape(1).view(torch.uint8).numpy(), (rows, nblocks, 2))
    return d16.reshape(rows, nblocks).contiguous().view(torch.uint8).numpy().reshape(rows, nblocks, 2)


#: values per encoding step: small enough to stay in cache
_STEP_VALUES = 1 << 16


def _code_bytes(codes: torch.Tensor, block: int) -> np.ndarray:
    """int8 codes ``[R, C]`` as their bytes (code mod 256: -1 is 255), ``[R, C / block, block]``."""
    if codes.dim() != 2 or codes.shape[1] % block:
        raise ValueError(f"rows of {block}-value blocks expected, got shape {tuple(codes.shape)}")
    raw = codes.to(torch.int8).contiguous().numpy().view(np.uint8)
    return raw.reshape(codes.shape[0], codes.shape[1] // block, block)


#: ``code_rows(r0, r1)`` -> the code bytes of rows ``r0:r1`` (uint8 mod 256, ``[r1 - r0, C]``), valid
#: until the thread's next call (it is called from two threads at once, for disjoint rows): how the
#: ``*_rows`` encoders take codes that never exist as one tensor.
CodeRows = Callable[[int, int], np.ndarray]


def _stored_lanes(code_bytes: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Code bytes (mod 256, numel % 8 == 0) -> stored codes t + 1 in ``out``, as uint64 words of 8 lanes."""
    x = code_bytes.reshape(-1).view(np.uint64)
    np.bitwise_and(x, np.uint64(_LOW7), out=out)
    out += np.uint64(_ONES)
    np.bitwise_and(x, np.uint64(_HIGH & (2**64 - 1)), out=tmp)
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
    if compiled is not None:  # the same bytes, one compiled pass instead of the word arithmetic below

        def encode(steps: list[tuple[int, int]]) -> None:
            for r0, r1 in steps:
                target = into(r0, r1)
                halves = target.shape[-1] // (block // 4)
                grid = _view(target, (r1 - r0, cols // block // halves, halves, block // 4))
                compiled.pack_code_planes(code_rows(r0, r1).reshape(r1 - r0, cols), *shifts, grid)

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


def encode_tq2_0(codes: torch.Tensor, d: torch.Tensor | float = 1.0) -> torch.Tensor:
    """int8 codes ``[R, C]`` (C % 256 == 0) -> uint8 ``[R, C/256 * 66]``; ``d`` scalar or per block."""
    c = _code_bytes(codes, QK_K)
    return encode_tq2_0_rows(lambda r0, r1: c[r0:r1], c.shape[0], c.shape[1] * QK_K, d)


def encode_tq2_0_rows(code_rows: CodeRows, rows: int, cols: int, d: torch.Tensor | float = 1.0) -> torch.Tensor:
    """:func:`encode_tq2_0` of codes handed out a few rows at a time by ``code_rows`` (see CodeRows)."""
    nb = cols // QK_K
    out = np.empty((rows, nb, 66), dtype=np.uint8)
    # each 256-value block is two 128-value halves of four 32-value planes, plane i at shift 2i
    encode_planes_rows(code_rows, rows, cols, QK_K // 2, (0, 2, 4, 6), lambda r0, r1: out[r0:r1, :, :64])
    out[:, :, 64:] = _d_bytes(d, rows, nb)
    return torch.from_numpy(out.reshape(rows, nb * 66))


def decode_tq2_0(raw: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[R, C/256 * 66]`` -> (int8 codes ``[R, C]`` with stored code 3 as 2, fp16 d ``[R, C/256]``)."""
    rows, nb = raw.shape[0], cols // QK_K
    b = raw.reshape(rows, nb, 66)
    w = b[:, :, :64].contiguous().view(torch.int64).reshape(rows, nb, 2, 1, 4)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int64).reshape(4, 1)
    codes = _minus_one((w >> shifts) & _TWO_BITS).reshape(rows, cols)
    d = b[:, :, 64:].contiguous().view(torch.float16).reshape(rows, nb)
    return codes, d


def tq2_0_raw_codes(raw: torch.Tensor, cols: int) -> torch.Tensor:
    """The 2-bit fields of a TQ2_0 tensor, uint8 ``[R, C/256, 64]``, for validity checks."""
    return raw.reshape(raw.shape[0], cols // QK_K, 66)[:, :, :64]


# --- TQ1_0 ----------------------------------------------------------------------------------------

_POW4 = torch.tensor([81, 27, 9, 3], dtype=torch.uint8).reshape(4, 1)
_MUL5 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)
_MUL4 = torch.tensor([1, 3, 9, 27], dtype=torch.int16)
#: byte stored for a base-3 value v (0..242): ceil(v * 256 / 243)
_TQ1_BYTE = ((torch.arange(243, dtype=torch.int32) * 256 + 242) // 243).to(torch.uint8)
_TQ1_BYTE_NP = np.concatenate([_TQ1_BYTE.numpy(), np.zeros(13, dtype=np.uint8)])  # 256 entries


def encode_tq1_0(codes: torch.Tensor, d: torch.Tensor | float = 1.0) -> torch.Tensor:
    """int8 codes ``[R, C]`` (C % 256 == 0) -> uint8 ``[R, C/256 * 54]``; ``d`` scalar or per block."""
    c = _code_bytes(codes, QK_K)
    return encode_tq1_0_rows(lambda r0, r1: c[r0:r1], c.shape[0], c.shape[1] * QK_K, d)


def encode_tq1_0_rows(code_rows: CodeRows, rows: int, cols: int, d: torch.Tensor | float = 1.0) -> torch.Tensor:
    """:func:`encode_tq1_0` of codes handed out a few rows at a time by ``code_rows`` (see CodeRows)."""
    nb = cols // QK_K
    out = np.empty((rows, nb, 54), dtype=np.uint8)

    def encode(steps: list[tuple[int, int]]) -> None:
        for r0, r1 in steps:
            x, o = code_rows(r0, r1).reshape(r1 - r0, nb, QK_K), out[r0:r1]
            # base-3 digits weighted 81, 27, 9, 3 (, 1): stored codes c + 1 sum to at most 242, and the
            # +1s add 121 (or 120) in total, so the byte arithmetic below never needs more than 8 bits
            _base3(x[:, :, :160].reshape(r1 - r0, nb, 5, 32), (81, 27, 9, 3, 1), o[:, :, :32])
            _base3(x[:, :, 160:240].reshape(r1 - r0, nb, 5, 16), (81, 27, 9, 3, 1), o[:, :, 32:48])
            _base3(x[:, :, 240:].reshape(r1 - r0, nb, 4, 4), (81, 27, 9, 3), o[:, :, 48:52])
            np.take(_TQ1_BYTE_NP, o[:, :, :52], out=o[:, :, :52])

    _split(_row_steps(rows, cols), encode)
    out[:, :, 52:] = _d_bytes(d, rows, nb)
    return torch.from_numpy(out.reshape(rows, nb * 54))


def _base3(digits: np.ndarray, weights: tuple[int, ...], out: np.ndarray) -> None:
    """out = sum of (code + 1) * weight over axis 2 of ``digits`` (code bytes), mod 256."""
    np.multiply(digits[:, :, 0], weights[0], out=out)
    tmp = np.empty_like(out)
    for i, w in enumerate(weights[1:], start=1):
        np.multiply(digits[:, :, i], w, out=tmp)
        out += tmp
    out += sum(weights)


def _trits(q: torch.Tensor, mul: torch.Tensor) -> torch.Tensor:
    """Trits of base-3 bytes ``q [..., k]`` -> ``[..., len(mul), k]`` in {0, 1, 2}."""
    x = (q.to(torch.int16).unsqueeze(-2) * mul.reshape(-1, 1)) & 0xFF
    return (x * 3) >> 8


def decode_tq1_0(raw: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[R, C/256 * 54]`` -> (int8 codes ``[R, C]``, fp16 d ``[R, C/256]``).

    A byte that is no valid encoding decodes to some trits anyway; :func:`tq1_0_first_noncanonical`
    finds such bytes (re-encoding their trits would give different bytes).
    """
    rows, nb = raw.shape[0], cols // QK_K
    b = raw.reshape(rows, nb, 54)
    t0 = _trits(b[:, :, :32], _MUL5).reshape(rows, nb, 160)
    t1 = _trits(b[:, :, 32:48], _MUL5).reshape(rows, nb, 80)
    th = _trits(b[:, :, 48:52], _MUL4).reshape(rows, nb, 16)
    codes = torch.cat([t0, t1, th], dim=-1).reshape(rows, cols).to(torch.int8) - 1
    d = b[:, :, 52:].contiguous().view(torch.float16).reshape(rows, nb)
    return codes, d


# --- Q8_0 -----------------------------------------------------------------------------------------


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C ``roundf``: halves away from zero, exact for every float32 (no ``+0.5`` rounding slip)."""
    a = x.abs()
    f = a.floor()
    return torch.sign(x) * (f + torch.floor(2 * (a - f)))


def encode_q8_0(x: torch.Tensor) -> torch.Tensor:
    """float ``[R, C]`` (C % 32 == 0) -> uint8 ``[R, C/32 * 34]``, byte-identical to ggml's reference."""
    rows, cols = x.shape
    nb = cols // QK8_0
    b = x.float().reshape(rows, nb, QK8_0)
    d = b.abs().amax(dim=-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = _round_half_away(b * inv).to(torch.int8)
    out = torch.empty(rows, nb, 34, dtype=torch.uint8)
    out[:, :, :2] = d.to(torch.float16).view(torch.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = q.view(torch.uint8)
    return out.reshape(rows, nb * 34)


def decode_q8_0(raw: torch.Tensor, cols: int) -> torch.Tensor:
    rows, nb = raw.shape[0], cols // QK8_0
    b = raw.reshape(rows, nb, 34)
    d = b[:, :, :2].contiguous().view(torch.float16).float()
    q = b[:, :, 2:].contiguous().view(torch.int8).float()
    return (q * d).reshape(rows, cols)


# --- checks ---------------------------------------------------------------------------------------


def first_code_3(fields: torch.Tensor) -> int | None:
    """Index (in bytes of ``fields``, flattened) of the first byte holding a 2-bit field equal to 3."""
    bad = (fields & (fields >> 1)) & 0x55
    hits = torch.nonzero(bad.reshape(-1))
    return int(hits[0]) if hits.numel() else None


#: The bytes :func:`encode_tq1_0` can produce: ``ceil(v * 256 / 243)`` for a base-3 value v of five
#: trits in ``qs``; in ``qh`` only four trits are stored (times 3), so v is a multiple of 3 there.
_TQ1_QS_OK = torch.zeros(256, dtype=torch.bool)
_TQ1_QS_OK[_TQ1_BYTE.long()] = True
_TQ1_QH_OK = torch.zeros(256, dtype=torch.bool)
_TQ1_QH_OK[_TQ1_BYTE[::3].long()] = True


def tq1_0_first_noncanonical(raw: torch.Tensor, cols: int) -> int | None:
    """Row of the first TQ1_0 block holding a ``qs``/``qh`` byte that no five (four) trits encode.

    Such a byte decodes to plausible trits whose re-encoding differs, so the file was not written
    by a TQ1_0 encoder: reject it rather than load made-up codes.
    """
    b = raw.reshape(raw.shape[0], cols // QK_K, 54)
    bad = ~_TQ1_QS_OK[b[:, :, :48].long()].all(-1) | ~_TQ1_QH_OK[b[:, :, 48:52].long()].all(-1)
    hits = torch.nonzero(bad.any(-1))
    return int(hits[0]) if hits.numel() else None


# --- float types ----------------------------------------------------------------------------------


def encode_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float values as stored by F32 / F16 / BF16 (rounded once, to nearest)."""
    return x.to(dtype)


def decode_float(raw: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 ``[R, C * itemsize]`` -> ``[R, C]`` of ``dtype``, as stored."""
    return raw.contiguous().view(dtype).reshape(raw.shape[0], cols)
