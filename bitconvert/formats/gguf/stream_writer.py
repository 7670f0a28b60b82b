"""A streaming GGUF v3 writer: header, metadata and tensor infos first, then each tensor's bytes.

The layout is planned from names, types and shapes before any tensor is produced, so a writer
holds one tensor at a time. Written directly (not with gguf-py's GGUFWriter) because GGUFWriter
cannot name bitnet.cpp's I2_S type (id 36), whose byte size ggml special-cases.
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import Keys

from ...io.output import FileSlice, OutputFile
from . import types
from .parser import (
    ARRAY,
    BOOL,
    DEFAULT_ALIGNMENT,
    FLOAT32,
    INT32,
    KV,
    MAGIC,
    NUMPY_DTYPES,
    SCALAR_FORMATS,
    STRING,
    UINT32,
)

VERSION = 3


@dataclass(frozen=True)
class PlannedGGUFTensor:
    name: str
    type: int  # GGML type id
    shape: tuple[int, ...]  # PyTorch order

    @property
    def nbytes(self) -> int:
        return types.TYPES[self.type].nbytes(self.shape)


def kv_str(value: str) -> KV:
    return KV(STRING, value)


def kv_u32(value: int) -> KV:
    return KV(UINT32, int(value))


def kv_f32(value: float) -> KV:
    return KV(FLOAT32, float(value))


def kv_bool(value: bool) -> KV:
    return KV(BOOL, bool(value))


def kv_strs(values: Iterable[str]) -> KV:
    return KV(ARRAY, list(values), STRING)


def kv_f32s(values: Iterable[float]) -> KV:
    return KV(ARRAY, np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype="<f4"), FLOAT32)


def kv_i32s(values: Iterable[int]) -> KV:
    return KV(ARRAY, np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype="<i4"), INT32)


def _encode_str(s: str) -> bytes:
    raw = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def encode_kv(key: str, kv: KV) -> bytes:
    out = [_encode_str(key), struct.pack("<I", kv.type)]
    if kv.type in SCALAR_FORMATS:
        out.append(struct.pack(SCALAR_FORMATS[kv.type][0], kv.value))
    elif kv.type == STRING:
        out.append(_encode_str(kv.value))
    elif kv.type == ARRAY:
        out.append(struct.pack("<IQ", kv.item_type, len(kv.value)))
        if kv.item_type == STRING:
            out.extend(_encode_str(s) for s in kv.value)
        elif kv.item_type in SCALAR_FORMATS:
            out.append(np.asarray(kv.value).astype(NUMPY_DTYPES[kv.item_type]).tobytes())
        else:
            raise ValueError(f"{key}: unsupported array item type {kv.item_type}")
    else:
        raise ValueError(f"{key}: unsupported value type {kv.type}")
    return b"".join(out)


def _as_bytes(a: np.ndarray) -> memoryview:
    """An array's bytes as stored (any dtype), flat, without a copy where it is contiguous."""
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _pad(n: int, alignment: int) -> int:
    return -n % alignment


class GGUFStreamWriter:
    """Writes one GGUF file whose tensors are known up front, streaming their bytes in plan order."""

    def __init__(
        self, path: Path, metadata: dict[str, KV], plan: list[PlannedGGUFTensor], alignment: int = DEFAULT_ALIGNMENT
    ) -> None:
        self.path = path
        self.plan = plan
        self.alignment = alignment
        md = dict(metadata)
        if alignment != DEFAULT_ALIGNMENT:
            md[Keys.General.ALIGNMENT] = kv_u32(alignment)
        head = [MAGIC, struct.pack("<IQQ", VERSION, len(plan), len(md))]
        head.extend(encode_kv(k, v) for k, v in md.items())
        offset = 0
        for t in plan:
            ne = tuple(reversed(t.shape)) or (1,)
            head.append(_encode_str(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}q", *ne))
            head.append(struct.pack("<IQ", t.type, offset))
            offset += t.nbytes + _pad(t.nbytes, alignment)
        raw = b"".join(head)
        raw += b"\0" * _pad(len(raw), alignment)
        self._out = OutputFile(path, len(raw) + offset)
        self._out.write(raw)
        self._next = 0
        # Writes run on a thread (the kernel copy releases the GIL) so the next tensor is encoded
        # meanwhile; the queue holds at most two pieces, so memory stays bounded.
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="gguf-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            buf = self._queue.get()
            if buf is None:
                return
            if self._error is None:
                try:
                    if isinstance(buf, FileSlice):  # stored bytes kept as they are: copied file to file
                        self._out.copy(buf)
                    else:
                        self._out.write(buf)
                except BaseException as exc:  # reported to the caller on its next write or close
                    self._error = exc

    def _put(self, buf) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(buf)

    def _stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def write(self, name: str, data: np.ndarray | bytes) -> None:
        self.write_parts(name, [data])

    def write_parts(self, name: str, parts: Iterable[np.ndarray | bytes | FileSlice]) -> None:
        """One tensor's bytes, given in consecutive pieces (so a large tensor is never copied whole);
        a :class:`FileSlice` is copied file to file."""
        want = self.plan[self._next]
        if name != want.name:
            raise ValueError(f"GGUF writer expected tensor {want.name}, got {name}")
        written = 0
        for part in parts:
            buf = part if isinstance(part, (bytes, bytearray, FileSlice)) else _as_bytes(part)
            size = buf.nbytes if isinstance(buf, FileSlice) else len(buf)
            if written + size > want.nbytes:
                raise ValueError(f"GGUF writer got more than the {want.nbytes} bytes planned for {want.name}")
            self._put(buf)
            written += size
        if written != want.nbytes:
            raise ValueError(f"GGUF writer expected {want.nbytes} bytes for {want.name}, got {written}")
        self._put(b"\0" * _pad(want.nbytes, self.alignment))
        self._next += 1

    def close(self) -> None:
        self._stop()
        try:
            if self._error is not None:
                raise self._error
            if self._next != len(self.plan):
                raise ValueError(f"{self.path}: closed before tensor {self.plan[self._next].name} was written")
            self._out.close()
        finally:
            self._out.discard()

    def __enter__(self) -> GGUFStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop()
            self._out.discard()
