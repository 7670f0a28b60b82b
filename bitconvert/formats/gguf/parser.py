"""A bounded GGUF parser: the header is checked against the file before any tensor is read.

gguf-py's reader trusts every length it reads (an array of 2**62 items makes it allocate without
end) and cannot read bitnet.cpp's I2_S. This parser checks what ggml's C parser checks: every
string and array length against the bytes left, no duplicate keys or tensor names, at most four
dimensions, overflow-checked sizes, tensor offsets aligned and equal to the running total, and all
data inside the file. A malformed file fails with one :class:`CheckpointError` line, quickly and in
little memory. Tensor bytes are then read one tensor at a time with ``pread``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUFValueType, Keys

from ...dtypes import Dense
from ...errors import CheckpointError
from ...io.safetensors import MAP_MIN_BYTES, map_private, read_exact
from . import types

MAGIC = struct.pack("<I", GGUF_MAGIC)  # b"GGUF"
MAX_DIMS = 4
MAX_NAME = 64  # ggml's GGML_MAX_NAME, terminating NUL included
INT64_MAX = 2**63 - 1
DEFAULT_ALIGNMENT = GGUF_DEFAULT_ALIGNMENT

_V = GGUFValueType
UINT8, INT8, UINT16, INT16, UINT32, INT32 = (
    int(_V.UINT8),
    int(_V.INT8),
    int(_V.UINT16),
    int(_V.INT16),
    int(_V.UINT32),
    int(_V.INT32),
)
FLOAT32, BOOL, STRING, ARRAY = int(_V.FLOAT32), int(_V.BOOL), int(_V.STRING), int(_V.ARRAY)
UINT64, INT64, FLOAT64 = int(_V.UINT64), int(_V.INT64), int(_V.FLOAT64)
SCALAR_FORMATS: dict[int, tuple[str, int]] = {
    UINT8: ("<B", 1),
    INT8: ("<b", 1),
    UINT16: ("<H", 2),
    INT16: ("<h", 2),
    UINT32: ("<I", 4),
    INT32: ("<i", 4),
    FLOAT32: ("<f", 4),
    BOOL: ("<?", 1),
    UINT64: ("<Q", 8),
    INT64: ("<q", 8),
    FLOAT64: ("<d", 8),
}
NUMPY_DTYPES = {
    UINT8: "<u1", INT8: "<i1", UINT16: "<u2", INT16: "<i2", UINT32: "<u4", INT32: "<i4",
    FLOAT32: "<f4", BOOL: "<u1", UINT64: "<u8", INT64: "<i8", FLOAT64: "<f8",
}  # fmt: skip


@dataclass(frozen=True)
class KV:
    type: int  # GGUF value type
    value: Any  # python scalar, str, or list / numpy array for arrays
    item_type: int | None = None  # for arrays


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int  # GGML type id
    shape: tuple[int, ...]  # PyTorch order (ne reversed)
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return types.type_name(self.type)

    @property
    def ggml(self) -> types.GGMLType:
        return types.TYPES[self.type]


class _Cursor:
    """Sequential little-endian reads that never go past the end of the file."""

    def __init__(self, f, size: int, path: Path) -> None:
        self.f, self.size, self.path, self.pos = f, size, path, 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"malformed GGUF header at byte {self.pos}: {problem}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise self.fail(f"{what} needs {n} bytes, only {self.left} left in the file")
        raw = self.f.read(n)
        if len(raw) != n:
            raise self.fail(f"file ended while reading {what}")
        self.pos += n
        return raw

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, size = SCALAR_FORMATS[vtype]
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar(UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        return self.take(n, what).decode("utf-8", errors="surrogateescape")


def _value(cur: _Cursor, vtype: int, key: str) -> KV:
    if vtype in SCALAR_FORMATS:
        return KV(vtype, cur.scalar(vtype, f"value of {key!r}"))
    if vtype == STRING:
        return KV(vtype, cur.string(f"value of {key!r}"))
    if vtype != ARRAY:
        raise cur.fail(f"key {key!r} has unknown value type {vtype}")
    item = cur.u32(f"item type of {key!r}")
    count = cur.u64(f"length of {key!r}")
    if item in SCALAR_FORMATS:
        size = SCALAR_FORMATS[item][1]
        if count > cur.left // size:
            raise cur.fail(f"array {key!r} declares {count} items of {size} bytes, only {cur.left} bytes left")
        arr = np.frombuffer(cur.take(count * size, f"array {key!r}"), dtype=NUMPY_DTYPES[item])
        return KV(ARRAY, arr.astype(bool) if item == BOOL else arr, item)
    if item == STRING:
        if count > cur.left // 8:  # every string takes at least its 8-byte length
            raise cur.fail(f"array {key!r} declares {count} strings, only {cur.left} bytes left")
        return KV(ARRAY, [cur.string(f"item {i} of {key!r}") for i in range(count)], item)
    raise cur.fail(f"array {key!r} has item type {item}, which GGUF does not allow in arrays")


class GGUFFile:
    """A validated view of one GGUF file: metadata, tensor infos, and per-tensor reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            self.size = size  # bytes in the file: what any count read from the header is bounded by
            with open(self.path, "rb") as f:
                self._parse(_Cursor(f, size, self.path))
        except OSError as exc:
            raise CheckpointError(self.path, f"cannot read: {exc.strerror or exc}") from None

    def _parse(self, cur: _Cursor) -> None:
        """Header, then metadata, then tensor infos, then where each tensor's bytes lie."""
        n_tensors, n_kv = self._header(cur)
        self.metadata: dict[str, KV] = {}
        for _ in range(n_kv):
            key = cur.string("a key")
            if key in self.metadata:
                raise cur.fail(f"duplicate key {key!r}")
            self.metadata[key] = _value(cur, cur.u32(f"type of {key!r}"), key)
        self.alignment = self._alignment()
        infos = self._tensor_infos(cur, n_tensors)
        self.data_start = -(-cur.pos // self.alignment) * self.alignment
        self._place_tensors(infos, cur.size)

    def _header(self, cur: _Cursor) -> tuple[int, int]:
        """(tensor count, key count) after the magic and version, each bounded by the bytes left."""
        magic = cur.take(4, "the magic") if cur.left >= 4 else b""
        if magic != MAGIC:
            raise CheckpointError(self.path, "not a GGUF file (no GGUF magic)")
        self.version = cur.u32("the version")
        if self.version in (1,):
            raise CheckpointError(self.path, "GGUF version 1 is not supported (llama.cpp dropped it too)")
        if self.version not in (2, 3):
            if self.version & 0xFFFF == 0:
                raise CheckpointError(self.path, "big-endian GGUF is not supported")
            raise CheckpointError(self.path, f"unknown GGUF version {self.version}")
        n_tensors = cur.scalar(INT64, "the tensor count")
        n_kv = cur.scalar(INT64, "the key count")
        # A tensor info takes at least 8+4+4+8 bytes (empty name, no dims), a key/value at least 8+4+1.
        if not 0 <= n_tensors <= cur.left // 24:
            raise cur.fail(f"{n_tensors} tensors cannot fit in the {cur.left} bytes left")
        if not 0 <= n_kv <= cur.left // 13:
            raise cur.fail(f"{n_kv} keys cannot fit in the {cur.left} bytes left")
        return n_tensors, n_kv

    def _alignment(self) -> int:
        align = self.metadata.get(Keys.General.ALIGNMENT)
        if align is None:
            return DEFAULT_ALIGNMENT
        if align.type != UINT32 or align.value == 0 or align.value & (align.value - 1):
            raise CheckpointError(self.path, f"general.alignment must be a power-of-two u32, got {align.value!r}")
        return align.value

    def _tensor_infos(self, cur: _Cursor, n_tensors: int) -> list[tuple[str, int, tuple[int, ...], int]]:
        infos: list[tuple[str, int, tuple[int, ...], int]] = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = cur.string("a tensor name")
            if len(name.encode("utf-8", errors="surrogateescape")) >= MAX_NAME:
                raise cur.fail(f"tensor name {name[:80]!r} is longer than {MAX_NAME - 1} bytes")
            if name in names:
                raise cur.fail(f"duplicate tensor {name!r}")
            names.add(name)
            n_dims = cur.u32(f"dimension count of {name!r}")
            if n_dims > MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has {n_dims} dimensions, at most {MAX_DIMS} allowed")
            ne = [cur.scalar(INT64, f"dimensions of {name!r}") for _ in range(n_dims)]
            gtype = cur.u32(f"type of {name!r}")
            offset = cur.u64(f"offset of {name!r}")
            self._check_tensor(name, ne, gtype)
            infos.append((name, gtype, tuple(reversed(ne)), offset))
        return infos

    def _place_tensors(self, infos: list[tuple[str, int, tuple[int, ...], int]], file_size: int) -> None:
        """Offsets aligned, each equal to the running total, and the data inside the file.

        A TL1/TL2 tensor owns the 32 bytes after its padded data, where its scale is. bitnet.cpp's
        gguf-py lists no tensor there; upstream gguf-py lists a 0-dim F32 ``<name>_scale``, read here
        as that slot (:attr:`scale_entries`)."""
        self.tensors: dict[str, TensorInfo] = {}
        self.scale_entries: list[str] = []
        expected = 0
        previous: TensorInfo | None = None
        for name, gtype, shape, offset in infos:
            t = types.TYPES[gtype]
            if t.tiled and self.alignment != DEFAULT_ALIGNMENT:
                raise CheckpointError(self.path, f"{t.name} needs GGUF's alignment of {DEFAULT_ALIGNMENT}, "
                                                 f"the file has {self.alignment}", name)  # fmt: skip
            if (
                previous is not None
                and previous.ggml.tiled
                and self._is_scale_slot(previous, name, gtype, shape, offset)
            ):
                self.scale_entries.append(name)
                continue
            size = t.nbytes(shape)
            if offset % self.alignment:
                raise CheckpointError(self.path, f"data offset {offset} is not aligned to {self.alignment}", name)
            if offset != expected:
                shared = types.SHARED_IDS.get(gtype)
                problem = f"data offset {offset}, expected {expected} (overlap or gap)"
                if shared is not None:
                    problem += f"; type {gtype} was read as bitnet.cpp's {t.name}, not {shared}, which is not supported"
                raise CheckpointError(self.path, problem, name)
            expected += -(-size // self.alignment) * self.alignment
            previous = self.tensors[name] = TensorInfo(name, gtype, shape, self.data_start + offset, size)
        if self.tensors:
            last = list(self.tensors.values())[-1]
            end = last.offset + last.nbytes
            if end > file_size:
                raise CheckpointError(
                    self.path, f"file is truncated: tensor data ends at byte {end}, the file has {file_size} bytes"
                )

    def _is_scale_slot(self, tl: TensorInfo, name: str, gtype: int, shape: tuple[int, ...], offset: int) -> bool:
        """Whether this entry is upstream gguf-py's listing of TL tensor ``tl``'s scale slot."""
        slot = tl.offset - self.data_start + tl.nbytes - tl.ggml.tail
        return name == tl.name + "_scale" and gtype == types.F32 and shape == () and offset == slot

    def _check_tensor(self, name: str, ne: list[int], gtype: int) -> None:
        if gtype not in types.TYPES:
            raise CheckpointError(
                self.path, f"tensor type {types.type_name(gtype)} (id {gtype}) is not supported", name
            )
        n = 1
        for d in ne:
            if d < 0:
                raise CheckpointError(self.path, f"negative dimension {d}", name)
            if d and n > INT64_MAX // d:
                raise CheckpointError(self.path, f"dimensions {ne} overflow a 64-bit element count", name)
            n *= d
        t = types.TYPES[gtype]
        if not ne and t.block > 1 and not t.flat:
            raise CheckpointError(self.path, f"a {t.name} tensor is rows of blocks, so it needs a dimension; this has none", name)
        if t.tiled and len(ne) != 2:
            raise CheckpointError(
                self.path, f"{t.name} tensor with {len(ne)} dimensions; {t.name} holds matrices", name
            )
        if not t.fits(tuple(reversed(ne))):
            what = f"{n} values" if t.flat else f"row length {ne[0]}"
            raise CheckpointError(self.path, f"{what} is not a multiple of {t.name}'s block of {t.block}", name)
        if n * max(t.block_bytes, 4) // t.block > INT64_MAX // 2:
            raise CheckpointError(self.path, f"dimensions {ne} give a byte size beyond 64 bits", name)

    # --- access -------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.metadata.get(key)
        return default if kv is None else kv.value

    def read_bytes(self, name: str, start: int = 0, length: int | None = None) -> np.ndarray:
        """The tensor's bytes (or ``length`` of them from ``start``) as flat uint8: large ranges mapped
        copy-on-write (only the pages used become resident), small ones read with pread."""
        t = self.tensors[name]
        length = t.nbytes - start if length is None else length
        if not 0 <= start <= start + length <= t.nbytes:
            raise ValueError(f"byte range {start}+{length} outside tensor {name} of {t.nbytes} bytes")
        if not length:
            return np.empty(0, dtype=np.uint8)
        read = map_private if length >= MAP_MIN_BYTES else read_exact
        return np.frombuffer(read(self.path, t.offset + start, length, name), dtype=np.uint8)

    def read_float(self, name: str) -> Dense:
        """A float tensor (F32/F16/BF16 as stored, Q8_0 dequantized to F32)."""
        t = self.tensors[name]
        if t.ggml.kind != "float":
            raise CheckpointError(self.path, f"{t.type_name} is not a float type", name)
        return t.ggml.decode_values(self.read_bytes(name), t.shape)


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False
