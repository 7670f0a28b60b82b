"""The byte layouts of bitnet.cpp's lookup-table types TL1 (ARM kernels) and TL2 (x86 kernels).

A TL tensor ``[m, k]`` (m rows of k codes) is packed in the order the kernels of one build read it,
which a :class:`~.kernel_config.Tile` fixes (row tile ``bm``, column tile ``bk``, SIMD block
``bmm``); after the data, padded to 32 bytes, comes a 32-byte slot: the fp32 scale, 28 zero bytes.
The same codes under another tile are other bytes, and nothing in the bytes says which tile.

- TL1: every byte holds four consecutive codes of one row as two base-3 pairs
  ``N(a, b) = 3a + b + 4`` (0..8), the first pair in the high nibble. Bytes run over row tiles,
  column tiles, SIMD blocks of ``bmm`` rows, column groups of ``by = 256 / bmm`` codes, 16-row
  groups, quads of codes, and the 16 rows of a group, outermost first: ``m * k / 4`` bytes.
- TL2: ``bmm`` is 32; the first ``k3 = k - k % bk`` columns are cut in triplets
  ``T = 9a + 3b + c`` (-13..13). Three streams follow each other: magnitudes |T| (two triplets per
  byte, high nibble first), signs (one bit per triplet, 16-bit little-endian words, bit ``15 - q``),
  then the last ``k % bk`` columns as TL1-style pairs. In every run of 32 magnitude or pair bytes
  the rows go in quarters 0, 2, 1, 3. The data is zero-filled to bitnet.cpp's size formula.

Pure numpy functions, no files; decoders expect bytes that :func:`first_invalid_tl1` /
:func:`first_invalid_tl2` accept.
"""

from __future__ import annotations

import numpy as np

from .kernel_config import Tile

ALIGN = 32
#: bytes after the padded data: the fp32 scale, then zeros
SLOT = 32
TL1_BMM = (32, 64)  # what bitnet.cpp's TL1 codegen accepts
TL2_BMM = 32
#: TL2 rows come in quarters of 8 in this order inside every 32-byte run
_QUARTERS = np.array([0, 2, 1, 3])
_PAIR = 4  # codes per TL1-style byte
_TRIPLET = 3


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def tl2_fill(m: int, k: int) -> int:
    """The bytes bitnet.cpp's converter gives a TL2 tensor (its formula, Python floor division)."""
    return (k - 256) * m // 3 * 5 // 8 + 256 * m // 2 * 4 // 8


def _runtime_tl2_fill(m: int, k: int) -> int:
    """The same formula as bitnet.cpp's runtime computes it: C division truncates toward zero, which
    differs from the converter's floor for k < 256."""

    def div(a: int, b: int) -> int:
        return a // b if a >= 0 else -(-a // b)

    return div(div((k - 256) * m, 3) * 5, 8) + 256 * m // 2 * 4 // 8


def data_bytes(kind: str, m: int, k: int) -> int:
    return m * k // _PAIR if kind == "tl1" else tl2_fill(m, k)


def nbytes(kind: str, shape: tuple[int, ...]) -> int:
    """A TL tensor's bytes in a GGUF data section, the scale slot included (bitnet.cpp's ggml_nbytes)."""
    if len(shape) != 2:
        return 0
    m, k = shape
    return _pad(max(data_bytes(kind, m, k), 0)) + SLOT


def _stream_sizes(m: int, k: int, tile: Tile) -> tuple[int, int, int]:
    """TL2's magnitude, sign and pair stream sizes."""
    k2 = k % tile.bk
    k3 = k - k2
    return m * k3 // 6, m * k3 // 24, m * k2 // _PAIR


def tile_problem(kind: str, tile: Tile) -> str | None:
    """Why bitnet.cpp cannot pack (or its codegen would not build) ``tile`` for ``kind``, or None."""
    m, k, bm, bk, bmm = tile.m, tile.k, tile.bm, tile.bk, tile.bmm
    if kind == "tl1":
        if bmm not in TL1_BMM:
            return f"bmm {bmm}: TL1 kernels take {' or '.join(map(str, TL1_BMM))}"
        by = 256 // bmm
        if m % bm or bm % bmm:
            return f"rows {m} are not tiled by bm {bm} in blocks of bmm {bmm}"
        if k % bk or bk % by:
            return f"columns {k} are not tiled by bk {bk} in groups of {by}"
        return None
    if bmm != TL2_BMM:
        return f"bmm {bmm}: TL2 kernels take {TL2_BMM} only"
    if m % bm or bm % TL2_BMM:
        return f"rows {m} are not tiled by bm {bm} in blocks of {TL2_BMM}"
    if bk % 24:
        return f"bk {bk} is not a multiple of 24 (eight triplets per sign word)"
    k2 = k % bk
    if k2 % 32:
        return f"the {k2} columns after the last whole bk tile are not a multiple of 32"
    if sum(_stream_sizes(m, k, tile)) > tl2_fill(m, k):
        return f"the {k2} columns after the last whole bk tile do not fit bitnet.cpp's TL2 size (at most 256)"
    if _pad(tl2_fill(m, k)) != _pad(_runtime_tl2_fill(m, k)):
        return "bitnet.cpp's converter and runtime would place the scale differently for this shape"
    return None


def _with_slot(kind: str, m: int, k: int, scale: float) -> np.ndarray:
    size = _pad(data_bytes(kind, m, k))
    out = np.zeros(size + SLOT, dtype=np.uint8)
    out[size : size + 4] = np.array([scale], dtype="<f4").view(np.uint8)
    return out


def _scale(raw: np.ndarray, kind: str, m: int, k: int) -> np.ndarray:
    at = _pad(data_bytes(kind, m, k))
    return np.ascontiguousarray(raw[at : at + 4]).view("<f4").copy()


def _pairs(codes: np.ndarray) -> np.ndarray:
    """int8 codes ``[r, c]`` -> one byte per four codes ``[r, c / 4]``: N(c0, c1) << 4 | N(c2, c3)."""
    c = codes.reshape(codes.shape[0], -1, _PAIR).astype(np.uint8)  # -1 is 255: sums below wrap back
    high = c[..., 0] * np.uint8(3) + c[..., 1] + np.uint8(4)
    low = c[..., 2] * np.uint8(3) + c[..., 3] + np.uint8(4)
    return (high << 4) | low


def _unpairs(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_pairs`: ``[r, c / 4]`` bytes -> int8 codes ``[r, c]``."""
    out = np.empty((*packed.shape, _PAIR), dtype=np.int8)
    for i, nibble in enumerate((packed >> 4, packed & 15)):
        out[..., 2 * i] = (nibble // 3).astype(np.int8) - 1
        out[..., 2 * i + 1] = (nibble % 3).astype(np.int8) - 1
    return out.reshape(packed.shape[0], -1)


# --- TL1 -----------------------------------------------------------------------------------------

_TL1_ORDER = (0, 4, 1, 5, 2, 6, 3)  # (row tile, sub, group, row) x (col tile, col group, quad) -> byte order


def _tl1_blocks(tile: Tile) -> tuple[int, ...]:
    by = 256 // tile.bmm
    return (tile.m // tile.bm, tile.bm // tile.bmm, tile.bmm // 16, 16, tile.k // tile.bk, tile.bk // by, by // _PAIR)


def encode_tl1(codes: np.ndarray, scale: float, tile: Tile) -> np.ndarray:
    """int8 codes ``[m, k]`` and the fp32 scale -> TL1 bytes (data, padding, scale slot)."""
    m, k = codes.shape
    out = _with_slot("tl1", m, k, scale)
    out[: m * k // _PAIR] = _pairs(codes).reshape(_tl1_blocks(tile)).transpose(_TL1_ORDER).reshape(-1)
    return out


def decode_tl1(raw: np.ndarray, shape: tuple[int, ...], tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    m, k = shape
    blocks = _tl1_blocks(tile)
    stored = np.asarray(raw).reshape(-1)[: m * k // _PAIR]
    ordered = stored.reshape([blocks[i] for i in _TL1_ORDER]).transpose(np.argsort(_TL1_ORDER))
    return _unpairs(ordered.reshape(m, k // _PAIR)), _scale(raw, "tl1", m, k)


def first_invalid_tl1(raw: np.ndarray, shape: tuple[int, ...], tile: Tile) -> str | None:
    m, k = shape
    stored = np.asarray(raw).reshape(-1)[: m * k // _PAIR]
    bad = np.flatnonzero(((stored >> 4) > 8) | ((stored & 15) > 8))
    return None if not bad.size else f"TL1 nibble above 8 (no pair of codes) at byte {int(bad[0])}"


# --- TL2 -----------------------------------------------------------------------------------------

# (row tile, sub, quarter, row) x (col tile, col group) -> byte order, quarters swapped
_RUN_ORDER = (0, 4, 1, 5, 2, 3)
# (row tile, sub, half, row) x (col tile, word group, triplet) -> (.., word row, triplet, half)
_SIGN_ORDER = (0, 4, 1, 5, 3, 6, 2)


def _runs(per_row: np.ndarray, bm: int, cols_per_tile: int) -> np.ndarray:
    """Bytes ``[m, n]`` in TL2 run order: row tiles, column tiles of ``cols_per_tile`` bytes, 32-row
    blocks, then each byte column as a run of 32 rows in quarters 0, 2, 1, 3."""
    m, n = per_row.shape
    blocks = per_row.reshape(m // bm, bm // TL2_BMM, 4, 8, n // cols_per_tile, cols_per_tile)
    return blocks[:, :, _QUARTERS].transpose(_RUN_ORDER).reshape(-1)


def _unruns(stored: np.ndarray, m: int, n: int, bm: int, cols_per_tile: int) -> np.ndarray:
    shape = (m // bm, bm // TL2_BMM, 4, 8, n // cols_per_tile, cols_per_tile)
    ordered = stored.reshape([shape[i] for i in _RUN_ORDER]).transpose(np.argsort(_RUN_ORDER))
    return ordered[:, :, _QUARTERS].reshape(m, n)  # the quarter order is its own inverse


def encode_tl2(codes: np.ndarray, scale: float, tile: Tile) -> np.ndarray:
    """int8 codes ``[m, k]`` and the fp32 scale -> TL2 bytes (three streams, fill, scale slot)."""
    m, k = codes.shape
    out = _with_slot("tl2", m, k, scale)
    n_mag, n_sign, n_pair = _stream_sizes(m, k, tile)
    k3 = k - k % tile.bk
    c = codes[:, :k3].astype(np.int8)
    t = c[:, 0::3] * np.int8(9) + c[:, 1::3] * np.int8(3) + c[:, 2::3]  # [m, k3 / 3]
    mag = np.abs(t).astype(np.uint8)
    out[:n_mag] = _runs((mag[:, 0::2] << 4) | mag[:, 1::2], tile.bm, tile.bk // 6)
    negative = (t < 0).reshape(m // tile.bm, tile.bm // TL2_BMM, 2, 16, k3 // tile.bk, tile.bk // 24, 8)
    bits = negative.transpose(_SIGN_ORDER).reshape(-1, 16)  # bit q of each word, q = 2 * triplet + half
    # word bit 15 - q: q 0..7 form its high byte, stored second (little-endian)
    out[n_mag : n_mag + n_sign] = np.packbits(bits, axis=-1, bitorder="big")[:, ::-1].reshape(-1)
    if n_pair:
        out[n_mag + n_sign : n_mag + n_sign + n_pair] = _runs(_pairs(codes[:, k3:]), tile.bm, 8)
    return out


def _tl2_triplets(flat: np.ndarray, m: int, k3: int, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """TL2's triplets as stored: (|T| ``[m, k3 / 3]`` uint8, the sign bits, bool, same shape)."""
    n_mag, n_sign = m * k3 // 6, m * k3 // 24
    packed = _unruns(flat[:n_mag], m, k3 // 6, tile.bm, tile.bk // 6)
    mag = np.empty((m, k3 // 3), dtype=np.uint8)
    mag[:, 0::2], mag[:, 1::2] = packed >> 4, packed & 15
    words = flat[n_mag : n_mag + n_sign].reshape(-1, 2)[:, ::-1]
    bits = np.unpackbits(words, axis=-1, bitorder="big")  # [word, q]
    order = (m // tile.bm, k3 // tile.bk, tile.bm // TL2_BMM, tile.bk // 24, 16, 8, 2)
    negative = bits.reshape(order).transpose(np.argsort(_SIGN_ORDER)).reshape(m, k3 // 3).astype(bool)
    return mag, negative


def decode_tl2(raw: np.ndarray, shape: tuple[int, ...], tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    m, k = shape
    n_mag, n_sign, n_pair = _stream_sizes(m, k, tile)
    k3 = k - k % tile.bk
    flat = np.asarray(raw).reshape(-1)
    codes = np.empty((m, k), dtype=np.int8)
    if k3:
        mag, negative = _tl2_triplets(flat, m, k3, tile)
        t = np.where(negative, -mag.astype(np.int16), mag.astype(np.int16))
        # T = 9a + 3b + c, digits in -1..1 (balanced base 3): a digit is the nearest multiple's quotient
        for j, weight in enumerate((9, 3, 1)):
            codes[:, j:k3:3] = ((t + weight * 13 + weight // 2) // weight) % 3 - 1
    if n_pair:
        packed = _unruns(flat[n_mag + n_sign : n_mag + n_sign + n_pair], m, (k - k3) // _PAIR, tile.bm, 8)
        codes[:, k3:] = _unpairs(packed)
    return codes, _scale(raw, "tl2", m, k)


def first_invalid_tl2(raw: np.ndarray, shape: tuple[int, ...], tile: Tile) -> str | None:
    m, k = shape
    n_mag, n_sign, n_pair = _stream_sizes(m, k, tile)
    flat = np.asarray(raw).reshape(-1)
    mag = flat[:n_mag]
    bad = np.flatnonzero(((mag >> 4) > 13) | ((mag & 15) > 13))
    if bad.size:
        return f"TL2 magnitude above 13 (no triplet of codes) at byte {int(bad[0])}"
    pairs = flat[n_mag + n_sign : n_mag + n_sign + n_pair]
    bad = np.flatnonzero(((pairs >> 4) > 8) | ((pairs & 15) > 8))
    if bad.size:
        return f"TL2 pair nibble above 8 (no pair of codes) at byte {n_mag + n_sign + int(bad[0])}"
    end = n_mag + n_sign + n_pair
    fill = np.flatnonzero(flat[end : _pad(tl2_fill(m, k))])
    if fill.size:
        return f"TL2 fill after the data is not zero (byte {end + int(fill[0])})"
    k3 = k - k % tile.bk
    if k3:
        mag3, negative = _tl2_triplets(flat, m, k3, tile)
        zero_negative = np.flatnonzero((negative & (mag3 == 0)).reshape(-1))
        if zero_negative.size:
            row, col = divmod(int(zero_negative[0]), k3 // 3)
            return f"TL2 sign bit set on a zero triplet (row {row}, column {3 * col}): bytes no encoder writes"
    return None
