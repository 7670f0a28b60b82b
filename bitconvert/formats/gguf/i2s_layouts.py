"""The three byte layouts of bitnet.cpp's I2_S type, chosen when bitnet.cpp is built.

bitnet.cpp's ``quantize_i2_s`` packs four 2-bit codes per byte (stored code = t + 1, so 0, 1, 2
mean -1, 0, +1), highest bits first, in one of three orders; nothing in a file says which:

- ``x86`` (x86 build with ``ACT_PARALLEL``, the default and what official files hold): the
  flattened tensor in 128-value blocks of 32 bytes; value ``j`` of a block goes to byte ``j % 32``
  at shift ``6 - 2 * (j // 32)``.
- ``x86-rows`` (x86 build without ``ACT_PARALLEL``): rows in groups of four; column ``c`` of the
  group's rows ``4g .. 4g+3`` shares byte ``g * cols + c``, row ``4g`` in the highest bits.
- ``arm`` (ARM NEON build, ``QK_I2_S = 64``): 64-value blocks of 16 bytes; value ``j`` of a block
  goes to byte ``j % 16`` at shift ``6 - 2 * (j // 16)``.

Every layout is followed by the fp32 scale and zero padding to 32 bytes. Pure functions on numpy
arrays, no files. Decoders read a stored code 3 (invalid) as 2; callers reject it first.
"""

from __future__ import annotations

import math

import numpy as np

from . import codecs

LAYOUTS = ("x86", "x86-rows", "arm")
DEFAULT_LAYOUT = "x86"
#: values per block of the two block layouts; x86-rows needs rows in fours instead
BLOCK = {"x86": 128, "arm": 64}
TAIL = 32  # bytes after the codes: the fp32 scale, then padding
_SHIFTS = (6, 4, 2, 0)
#: codes per byte
_PER_BYTE = len(_SHIFTS)


def layout_problem(layout: str, shape: tuple[int, ...]) -> str | None:
    """Why a tensor of ``shape`` cannot be stored in ``layout``, or None when it can."""
    if layout not in LAYOUTS:
        return f"unknown I2_S layout {layout!r} (known: {', '.join(LAYOUTS)})"
    n = math.prod(shape)
    if layout == "x86-rows":
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        return None if rows % 4 == 0 else f"{rows} rows are not a multiple of 4, which layout x86-rows needs"
    block = BLOCK[layout]
    return None if n % block == 0 else f"{n} values are not a multiple of {block}, which layout {layout} needs"


def _planes(codes: np.ndarray, layout: str) -> np.ndarray:
    """Stored codes (t + 1, uint8) arranged ``[4, bytes]``: plane i goes to shift ``6 - 2i``."""
    stored = (np.asarray(codes, dtype=np.int8) + np.int8(1)).view(np.uint8)
    if layout == "x86-rows":
        groups = stored.reshape(-1, _PER_BYTE, stored.shape[-1])  # [group, row in group, col]
        return groups.transpose(1, 0, 2).reshape(_PER_BYTE, -1)
    blocks = stored.reshape(-1, _PER_BYTE, BLOCK[layout] // _PER_BYTE)  # [block, plane, lane]
    return blocks.transpose(1, 0, 2).reshape(_PER_BYTE, -1)


def _with_tail(packed_bytes: int, scale: float) -> np.ndarray:
    """A zeroed buffer for ``packed_bytes`` of codes and the tail, the fp32 ``scale`` already in place."""
    out = np.zeros(packed_bytes + TAIL, dtype=np.uint8)
    out[packed_bytes : packed_bytes + 4] = np.array([scale], dtype="<f4").view(np.uint8)
    return out


def encode(codes: np.ndarray, scale: float, layout: str = DEFAULT_LAYOUT) -> np.ndarray:
    """int8 codes in {-1, 0, 1} (``[rows, cols]``) and the fp32 magnitude -> uint8 ``[size/4 + 32]``."""
    problem = layout_problem(layout, tuple(codes.shape))
    if problem:
        raise ValueError(problem)
    planes = _planes(codes, layout)
    out = _with_tail(codes.size // _PER_BYTE, scale)
    packed = out[: codes.size // _PER_BYTE]
    np.left_shift(planes[0], _SHIFTS[0], out=packed)
    for i in (1, 2, 3):
        packed |= planes[i] << _SHIFTS[i]
    return out


def encodes_rows(layout: str, cols: int) -> bool:
    """Whether :func:`encode_rows` serves ``layout`` for rows of ``cols`` values (blocks never span rows)."""
    return layout in BLOCK and cols % BLOCK[layout] == 0


def encode_rows(code_rows: codecs.CodeRows, rows: int, cols: int, scale: float, layout: str) -> np.ndarray:
    """:func:`encode` of codes handed out a few rows at a time (see codecs.CodeRows), for a block
    layout whose blocks tile each row (:func:`encodes_rows`): the same bytes."""
    if not encodes_rows(layout, cols):
        raise ValueError(f"layout {layout} cannot be encoded by rows of {cols} values")
    n = rows * cols
    out = _with_tail(n // _PER_BYTE, scale)
    packed = out[: n // _PER_BYTE].reshape(rows, cols // _PER_BYTE)
    codecs.encode_planes_rows(code_rows, rows, cols, BLOCK[layout], _SHIFTS, lambda r0, r1: packed[r0:r1])
    return out


def decode(raw: np.ndarray, shape: tuple[int, ...], layout: str = DEFAULT_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[size/4 + 32]`` -> (int8 codes of ``shape``, the fp32 scale as a one-element array).

    Only the four scale bytes of the tail are read: writers differ in what follows them.
    """
    problem = layout_problem(layout, shape)
    if problem:
        raise ValueError(problem)
    n = math.prod(shape) // _PER_BYTE
    packed = np.asarray(raw).reshape(-1)[:n]
    planes = np.stack([(packed >> s) & 3 for s in _SHIFTS])  # [4, bytes]
    lanes = shape[-1] if layout == "x86-rows" else BLOCK[layout] // _PER_BYTE
    stored = planes.reshape(_PER_BYTE, -1, lanes).transpose(1, 0, 2)
    codes = np.ascontiguousarray(stored).reshape(shape)
    codes -= 1  # uint8 wraps: stored 0 becomes 255, which is -1 as int8
    scale = np.ascontiguousarray(raw.reshape(-1)[n : n + 4]).view("<f4").copy()
    return codes.view(np.int8), scale


def indistinguishable(raw: np.ndarray, shape: tuple[int, ...]) -> bool:
    """True when every layout that fits ``shape`` decodes these bytes to the same codes.

    Then the layout does not matter (an all-zero or constant tensor, for instance); otherwise the
    bytes alone cannot tell which layout wrote them: every 2-bit field is a valid code in each.
    """
    decoded = [decode(raw, shape, lay)[0] for lay in LAYOUTS if layout_problem(lay, shape) is None]
    return all(np.array_equal(decoded[0], d) for d in decoded[1:])
