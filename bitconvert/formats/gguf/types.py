"""The GGML tensor types bitconvert reads and writes: one record per type, the only place their facts live.

Ids and block sizes come from gguf-py's constants (``GGMLQuantizationType``, ``GGML_QUANT_SIZES``),
the functions that turn values into bytes and back from :mod:`.codecs` and :mod:`.i2s_layouts`
(numpy arrays in and out). Three kinds:

- ``float``: F32 / F16 / BF16 (values as stored) and Q8_0 (quantized per 32-value block);
  ``encode(Dense [R, C]) -> uint8``, ``decode(raw [R, row bytes], C) -> Dense [R, C]``.
- ``ternary``: TQ1_0 / TQ2_0, rows of 256-value blocks each with an fp16 ``d``;
  ``encode(codes [R, C], d) -> uint8 [R, row bytes]``, ``decode(raw [R, row bytes], C) -> (codes, d [R, blocks])``.
- ``ternary`` with ``flat = True``: one fp32 scale per tensor after the codes, in a byte order a
  build of bitnet.cpp fixes (``encode(codes, scale, layout)``, ``decode(raw, shape, layout) ->
  (codes, scale [1])``): I2_S, whose 128-value blocks run over the flattened tensor (``layout``: an
  :mod:`.i2s_layouts` name), and TL1 / TL2 (``tiled``), packed by the tile of a kernel
  configuration (``layout``: a :class:`.kernel_config.Tile`; sizes from :mod:`.tl_layouts`).

``first_invalid(raw, shape)`` finds bytes no encoder writes (a 2-bit code 3, a non-canonical base-3
byte), so a reader refuses a corrupt tensor instead of loading made-up codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ...dtypes import Dense
from . import codecs, i2s_layouts, tl_layouts

_Q = GGMLQuantizationType

F32, F16, BF16, Q8_0, TQ1_0, TQ2_0 = (int(_Q.F32), int(_Q.F16), int(_Q.BF16), int(_Q.Q8_0), int(_Q.TQ1_0),
                                      int(_Q.TQ2_0))  # fmt: skip
#: bitnet.cpp's I2_S. Its fork of ggml numbers types on its own: 36 is I2_S there (gguf-py has no
#: such type and no id 36), 38 and 39 its TL1/TL2 lookup-table types (39 is MXFP4 upstream).
I2_S = 36
TL1, TL2 = 38, 39
#: bitnet.cpp's llama_ftype for an I2_S model (upstream gives 40 to another type); for TL1/TL2 models
#: it is the type id itself (38 is MXFP4_MOE upstream)
FILE_TYPE_I2_S = 40
#: values per TQ block (ggml's QK_K, 256): what a quantized linear's rows must be a multiple of
QK_K = codecs.QK_K


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    kind: str  # "float" | "ternary"
    block: int  # values per block (along each row; over the whole tensor when flat)
    block_bytes: int
    encode: Callable
    decode: Callable
    first_invalid: Callable[[np.ndarray, tuple[int, ...]], str | None] | None = None
    flat: bool = False
    tail: int = 0  # bytes after the blocks (I2_S: the scale and its padding)
    #: the last bytes of the tail that carry no data (I2_S: 28 after the scale, which llama.cpp's
    #: quantizer leaves uninitialised): byte comparisons skip them
    padding: int = 0
    dtype_name: str | None = None  # float types stored value by value: their safetensors dtype name
    max_finite: float | None = None  # magnitudes at or above this do not fit (F16 overflow)
    file_type: int | None = None  # general.file_type when this is the model's main weight type
    encode_rows: Callable | None = None  # ternary: encode(codes handed out by rows: codecs.CodeRows, R, C, d)
    #: TL1/TL2: the byte order depends on a kernel tile (the ``layout`` encode/decode/first_invalid take)
    tiled: bool = False

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes a tensor of ``shape`` (PyTorch order) takes in a GGUF data section, unpadded."""
        if self.tiled:
            return tl_layouts.nbytes(self.name.lower(), shape)
        n = math.prod(shape)
        if self.flat:
            return n // self.block * self.block_bytes + self.tail
        cols = shape[-1] if shape else 1
        return (n // cols) * (cols // self.block) * self.block_bytes if cols else 0

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the blocks tile the tensor: rows of whole blocks (or, flat, the whole tensor); a TL
        tensor is a matrix (which tile packs it is the kernel configuration's business)."""
        if self.tiled:
            return len(shape) == 2
        n = shape[-1] if shape and not self.flat else math.prod(shape)
        return n % self.block == 0

    def decode_values(self, raw: np.ndarray, shape: tuple[int, ...]) -> Dense:
        """A float type's stored bytes as values of ``shape`` (F32/F16/BF16 as stored, Q8_0 as float32)."""
        cols = shape[-1] if shape else 1
        values = self.decode(raw.reshape(-1, self.nbytes((cols,))), cols)
        return Dense(values.data.reshape(shape), values.dtype_name)

    def decode_codes(self, raw: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """(int8 codes of ``shape``, the scale stored in the data: per-block ``d`` or the flat scale)."""
        if self.flat:
            return self.decode(raw, shape)
        rows, cols = math.prod(shape[:-1]), shape[-1]
        codes, d = self.decode(raw.reshape(rows, -1), cols)
        return codes.reshape(shape), d


def _size(q: GGMLQuantizationType) -> dict:
    block, block_bytes = GGML_QUANT_SIZES[q]
    return {"id": int(q), "name": q.name, "block": block, "block_bytes": block_bytes}


def _float(q: GGMLQuantizationType, dtype_name: str, file_type: int, max_finite: float | None = None) -> GGMLType:
    return GGMLType(
        kind="float", encode=partial(codecs.encode_float, dtype_name=dtype_name),
        decode=partial(codecs.decode_float, dtype_name=dtype_name),
        dtype_name=dtype_name, max_finite=max_finite, file_type=file_type, **_size(q),
    )  # fmt: skip


def _tq2_0_invalid(raw: np.ndarray, shape: tuple[int, ...]) -> str | None:
    cols = shape[-1]
    bad = codecs.first_code_3(codecs.tq2_0_raw_codes(raw.reshape(-1, cols // QK_K * codecs.TQ2_0_BYTES), cols))
    return None if bad is None else f"TQ2_0 code 3 (not ternary) in row {bad // (cols // 4)}"


def _tq1_0_invalid(raw: np.ndarray, shape: tuple[int, ...]) -> str | None:
    cols = shape[-1]
    row = codecs.tq1_0_first_noncanonical(raw.reshape(-1, cols // QK_K * codecs.TQ1_0_BYTES), cols)
    return None if row is None else f"TQ1_0 byte that no ternary values encode (not canonical) in row {row}"


def _i2_s_invalid(raw: np.ndarray, shape: tuple[int, ...], layout: str | None = None) -> str | None:
    bad = codecs.first_code_3(raw.reshape(-1)[: math.prod(shape) // 4])
    return None if bad is None else f"I2_S code 3 (not ternary) at value {bad * 4} or after"


_F16_OVERFLOW = 65520.0  # the smallest magnitude that rounds to infinity in F16
_I2_S_BLOCK = i2s_layouts.BLOCK[i2s_layouts.DEFAULT_LAYOUT]

TYPES: dict[int, GGMLType] = {
    t.id: t
    for t in (
        _float(_Q.F32, "F32", int(LlamaFileType.ALL_F32)),
        _float(_Q.F16, "F16", int(LlamaFileType.MOSTLY_F16), _F16_OVERFLOW),
        _float(_Q.BF16, "BF16", int(LlamaFileType.MOSTLY_BF16)),
        GGMLType(kind="float", encode=codecs.encode_q8_0, decode=codecs.decode_q8_0, **_size(_Q.Q8_0)),
        GGMLType(kind="ternary", encode=codecs.encode_tq1_0, decode=codecs.decode_tq1_0,
                 first_invalid=_tq1_0_invalid, file_type=int(LlamaFileType.MOSTLY_TQ1_0),
                 encode_rows=codecs.encode_tq1_0_rows, **_size(_Q.TQ1_0)),
        GGMLType(kind="ternary", encode=codecs.encode_tq2_0, decode=codecs.decode_tq2_0,
                 first_invalid=_tq2_0_invalid, file_type=int(LlamaFileType.MOSTLY_TQ2_0),
                 encode_rows=codecs.encode_tq2_0_rows, **_size(_Q.TQ2_0)),
        # ggml is told one byte per value; the real size is 2 bits per value plus the tail.
        GGMLType(I2_S, "I2_S", "ternary", _I2_S_BLOCK, _I2_S_BLOCK // 4, i2s_layouts.encode, i2s_layouts.decode,
                 _i2_s_invalid, flat=True, tail=i2s_layouts.TAIL, padding=i2s_layouts.TAIL - 4,
                 file_type=FILE_TYPE_I2_S),
        # ggml is told one byte per value too; the real size is tl_layouts.nbytes (scale slot included).
        GGMLType(TL1, "TL1", "ternary", 1, 1, tl_layouts.encode_tl1, tl_layouts.decode_tl1,
                 tl_layouts.first_invalid_tl1, flat=True, tail=tl_layouts.SLOT, padding=tl_layouts.SLOT - 4,
                 file_type=TL1, tiled=True),
        GGMLType(TL2, "TL2", "ternary", 1, 1, tl_layouts.encode_tl2, tl_layouts.decode_tl2,
                 tl_layouts.first_invalid_tl2, flat=True, tail=tl_layouts.SLOT, padding=tl_layouts.SLOT - 4,
                 file_type=TL2, tiled=True),
    )
}  # fmt: skip
#: ids other programs give a meaning bitconvert does not read, where bitconvert reads another
SHARED_IDS = {TL2: "MXFP4 (upstream llama.cpp's type 39)"}
#: the names ``--gguf-type`` / ``--embed-type`` take
BY_OPTION = {t.name.lower(): t for t in TYPES.values()}


def type_name(type_id: int) -> str:
    """A type's name, for messages: ours, else gguf-py's, else the bare id."""
    t = TYPES.get(type_id)
    if t is not None:
        return t.name
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type {type_id}"
