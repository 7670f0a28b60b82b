"""transformers' packed 2-bit layout: four codes per byte, in row blocks (numpy).

Each quantized linear weight ``[R, C]`` is stored as uint8 ``[R/4, C]``: byte ``[r, c]`` holds code
``t[r + i*R/4, c] + 1`` in bits ``2i..2i+1`` (lowest first), so plane ``i`` of the bytes is rows
``i*R/4 ..`` of the codes. A field holding 3 is invalid.
"""

from __future__ import annotations

import numpy as np

#: four 2-bit codes per byte, along the output (row) dimension
VALUES_PER_BYTE = 4


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack int codes {-1, 0, 1} ``[R, C]`` into the row-block layout, uint8 ``[R/4, C]``."""
    if codes.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D array, got shape {tuple(codes.shape)}")
    rows, cols = codes.shape
    if rows % VALUES_PER_BYTE:
        raise ValueError(f"rows ({rows}) must be a multiple of {VALUES_PER_BYTE} to pack")
    planes = (np.asarray(codes, dtype=np.int8) + 1).view(np.uint8).reshape(VALUES_PER_BYTE, rows // VALUES_PER_BYTE, cols)
    packed = planes[3].copy()
    for plane in (2, 1, 0):  # in place: one pass per plane, no temporaries
        packed <<= 2
        packed |= planes[plane]
    return packed


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 ``[R/4, C]`` to int8 codes ``[R, C]``.

    Code 3 (invalid) comes back as 2; call :func:`first_invalid_code` to reject it first.
    """
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"unpack_codes expects a 2-D uint8 array, got {packed.dtype} {tuple(packed.shape)}")
    quarter, cols = packed.shape
    codes = np.empty((VALUES_PER_BYTE, quarter, cols), dtype=np.uint8)
    for plane in range(VALUES_PER_BYTE):
        np.right_shift(packed, 2 * plane, out=codes[plane])
        codes[plane] &= 3
    codes -= 1
    return codes.view(np.int8).reshape(VALUES_PER_BYTE * quarter, cols)


def first_invalid_code(packed: np.ndarray) -> tuple[int, int] | None:
    """Position (unpacked row, column) of the first 2-bit field holding 3, or None if all are valid."""
    bad = (packed & (packed >> 1)) & 0x55  # a field is 3 exactly when both its bits are set
    if not bad.any():
        return None
    r, c = (int(v) for v in np.argwhere(bad)[0])
    byte = int(bad[r, c])
    plane = next(i for i in range(VALUES_PER_BYTE) if byte & (1 << (2 * i)))
    return r + plane * packed.shape[0], c
