"""Bounded safetensors reading and streaming writing, one tensor at a time.

The reader checks the whole header against the file before any tensor is touched (a truncated
or hostile file fails at once with a one-line reason) and reads a tensor with ``pread`` so only
that tensor is resident. The writer lays out the header from a plan of names, dtypes and shapes,
then streams each tensor's bytes; nothing but the tensor being written is held.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import NAMES, Dense, itemsize
from ..errors import CheckpointError
from .jsonfile import parse_json_text
from .output import FileSlice, OutputFile

#: safetensors itself refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 8


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype_name: str  # as the header names it: "BF16", "U8", ...
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first byte in the file
    nbytes: int


def _no_duplicates(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise CheckpointError(path, f"header names {k!r} twice")
            out[k] = v
        return out

    return hook


class SafetensorsFile:
    """A validated view of one .safetensors file; tensors are read on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(self.path, f"not a safetensors file: {size} bytes, shorter than its header")
                n = int.from_bytes(head, "little")
                if n < 2 or n > MAX_HEADER_BYTES or n > size - 8:
                    raise CheckpointError(
                        self.path, f"not a safetensors file or truncated: header length {n} for a file of {size} bytes"
                    )
                raw = f.read(n)
        except OSError as exc:
            raise CheckpointError(self.path, f"cannot read: {exc.strerror or exc}") from None
        header = parse_json_text(raw, self.path, "the header", object_pairs_hook=_no_duplicates(self.path))
        if not isinstance(header, dict):
            raise CheckpointError(self.path, "header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise CheckpointError(self.path, "__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self.data_start = 8 + n
        self.tensors: dict[str, StoredTensor] = {}
        spans = []
        for name, info in header.items():
            t = self._parse_entry(name, info)
            self.tensors[name] = t
            spans.append((t.offset - self.data_start, t.offset - self.data_start + t.nbytes, name))
        spans.sort()
        end = 0
        for start, stop, name in spans:
            if start != end:
                raise CheckpointError(self.path, f"tensor data is not contiguous at byte {start}", name)
            end = stop
        available = size - self.data_start
        if end > available:
            cut = next(name for start, stop, name in spans if stop > available)  # the first tensor the file lacks
            raise CheckpointError(
                self.path,
                f"file is truncated: the header declares {end} bytes of tensor data, the file holds {available}",
                cut,
            )
        if end < available:
            raise CheckpointError(self.path, f"{available - end} unexpected bytes after the tensor data")

    def _parse_entry(self, name: str, info: Any) -> StoredTensor:
        if not isinstance(info, dict):
            raise CheckpointError(self.path, "header entry is not an object", name)
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in NAMES:
            raise CheckpointError(self.path, f"unsupported dtype {dtype!r:.80}", name)
        shape = info.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise CheckpointError(self.path, f"malformed shape {shape!r:.80}", name)
        offs = info.get("data_offsets")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1]
        ):
            raise CheckpointError(self.path, f"malformed data_offsets {offs!r:.80}", name)
        nbytes = math.prod(shape) * itemsize(dtype)
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(
                self.path, f"data_offsets span {offs[1] - offs[0]} bytes, shape {shape} needs {nbytes}", name
            )
        return StoredTensor(name, dtype, tuple(shape), self.data_start + offs[0], nbytes)

    def read(self, name: str) -> Dense:
        """The tensor's values (large tensors mapped copy-on-write, small ones read)."""
        t = self.tensors[name]
        return Dense.from_bytes(self.read_bytes(name), t.dtype_name, t.shape)

    def read_rows(self, name: str, start: int, stop: int) -> Dense:
        """Rows ``start:stop`` (of the first axis) of a tensor, read on their own with pread: a large
        tensor streamed in row blocks has one block resident at a time (a mapping's touched pages
        stay resident until the whole tensor is unmapped)."""
        t = self.tensors[name]
        rows = t.shape[0] if t.shape else 1
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"rows {start}:{stop} outside tensor {name} of {rows} rows")
        row_bytes = t.nbytes // rows if rows else 0
        n = (stop - start) * row_bytes
        raw = read_exact(self.path, t.offset + start * row_bytes, n, t.name) if n else np.empty(0, dtype=np.uint8)
        return Dense.from_bytes(raw, t.dtype_name, (stop - start, *t.shape[1:]))

    def row_slice(self, name: str, start: int, stop: int) -> FileSlice:
        """Where rows ``start:stop`` of a tensor lie in the file, for a writer that copies them as stored."""
        t = self.tensors[name]
        rows = t.shape[0] if t.shape else 1
        if not 0 <= start <= stop <= rows:
            raise ValueError(f"rows {start}:{stop} outside tensor {name} of {rows} rows")
        row_bytes = t.nbytes // rows if rows else 0
        shape = (stop - start, *t.shape[1:]) if t.shape else ()
        return FileSlice(self.path, t.offset + start * row_bytes, (stop - start) * row_bytes, t.dtype_name, shape)

    def read_bytes(self, name: str) -> np.ndarray:
        """The tensor's stored bytes, flat uint8 (for checks and hashes on bytes)."""
        t = self.tensors[name]
        return np.frombuffer(self._buffer(t), dtype=np.uint8) if t.nbytes else np.empty(0, dtype=np.uint8)

    def _buffer(self, t: StoredTensor) -> memoryview | np.ndarray:
        if t.nbytes >= MAP_MIN_BYTES:
            return map_private(self.path, t.offset, t.nbytes, t.name)
        return read_exact(self.path, t.offset, t.nbytes, t.name)


#: tensors at least this big are mapped rather than copied: reading them costs page mappings, not
#: a copy into freshly faulted memory (about 1 ns a byte, as much as quantizing them)
MAP_MIN_BYTES = 1 << 20


def map_private(path: Path, offset: int, length: int, tensor: str | None = None) -> memoryview:
    """``length`` bytes at ``offset`` as a private (copy-on-write) mapping: the file is never written,
    a consumer writing into the tensor gets its own pages, and only the pages it touches become
    resident. Unmapped when the last tensor viewing it goes."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + length:
                raise CheckpointError(path, "file ended while reading the tensor", tensor)
            m = mmap.mmap(f.fileno(), length + offset - start, access=mmap.ACCESS_COPY, offset=start)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}", tensor) from None
    return memoryview(m)[offset - start :]


#: bytes a mapped weight's reader goes through between two hand-backs of its pages (each thread)
RELEASE_STEP = 4 << 20


def page_release(values: np.ndarray) -> Callable[[int, int], None] | None:
    """``release(start, stop)`` for a C-contiguous array viewing a private mapping (:func:`map_private`):
    hands back to the system the pages that flat elements ``start:stop`` cover whole, so a weight
    read front to back in pieces is never resident whole (its file's pages stay in the page cache,
    and reading them again maps them again). None where ``values`` views no mapping.

    Handing back a private mapping's pages also drops anything written to them: only for values
    that are read, never written.
    """
    owner: Any = values
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    if not isinstance(owner, mmap.mmap) or not values.flags.c_contiguous or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    mapping = owner
    first = values.ctypes.data - np.frombuffer(mapping, dtype=np.uint8, count=1).ctypes.data
    item, page = values.itemsize, mmap.PAGESIZE
    pending = threading.local()  # per thread: the contiguous stretch read and not yet handed back

    def drop(start: int, stop: int) -> None:
        lo = -(-(first + start * item) // page) * page  # pages wholly inside the range only
        hi = (first + stop * item) // page * page
        if hi > lo:
            mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def release(start: int, stop: int) -> None:
        # each hand-back flushes the other cores' TLBs: one call per RELEASE_STEP bytes read, not per piece
        lo, hi = getattr(pending, "span", (start, start))
        if start != hi:
            drop(lo, hi)
            lo = start
        if (stop - lo) * item >= RELEASE_STEP:
            drop(lo, stop)
            lo = stop
        pending.span = (lo, stop)

    return release


def read_exact(path: Path, offset: int, length: int, tensor: str | None = None) -> np.ndarray:
    """``length`` bytes at ``offset`` (flat uint8) with pread: only they become resident, whatever the
    file's size. The buffer is not zeroed first: pread fills every byte or the read fails."""
    buf = np.empty(length, dtype=np.uint8)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            view = memoryview(buf)
            done = 0
            while done < length:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise CheckpointError(path, "file ended while reading the tensor", tensor)
                done += got
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}", tensor) from None
    return buf


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype_name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype_name)


class SafetensorsWriter:
    """Writes one file whose tensors are known up front, streaming their data in plan order."""

    def __init__(self, path: Path, plan: Iterable[PlannedTensor], metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.plan = list(plan)
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for t in self.plan:
            header[t.name] = {"dtype": t.dtype_name, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self._out = OutputFile(path, 8 + len(raw) + offset)
        self._out.write(len(raw).to_bytes(8, "little") + raw)
        self._next = 0
        self._rows = 0  # rows of the next tensor written so far

    def write(self, name: str, value: Dense | FileSlice) -> None:
        """Write the next planned tensor: whole, or as consecutive blocks of rows (its first axis),
        so that a large tensor never needs to be in memory at once; a :class:`FileSlice` is copied
        file to file."""
        want = self.plan[self._next]
        if want.shape:
            fits = value.shape[1:] == want.shape[1:] and len(value.shape) == len(want.shape)
            fits = fits and self._rows + value.shape[0] <= want.shape[0]
        else:
            fits = value.shape == want.shape
        if name != want.name or value.dtype_name != want.dtype_name or not fits:
            raise ValueError(
                f"writer expected {want.name} {want.dtype_name} {want.shape} (rows {self._rows}:), got {name} "
                f"{value.dtype_name} {value.shape}"
            )
        if isinstance(value, FileSlice):
            self._out.copy(value)
        elif value.size:
            self._out.write(value.raw())
        self._rows += value.shape[0] if want.shape else 0
        if not want.shape or self._rows == want.shape[0]:
            self._next += 1
            self._rows = 0

    def close(self) -> None:
        if self._next != len(self.plan):
            missing = self.plan[self._next].name
            self._out.discard()
            raise ValueError(f"{self.path}: closed before tensor {missing} was written")
        self._out.close()

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._out.discard()
