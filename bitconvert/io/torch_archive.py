"""The zip container of ``torch.save`` files, written byte for byte as torch writes it and read without torch.

``torch.save`` stores a pickle (``data.pkl``) and one record per tensor storage (``data/0``, ...) in
an uncompressed zip archive whose records all sit in one folder named after the file's stem. The
writer here reproduces torch 2.13's bytes (its zip writer is miniz, driven by
``caffe2/serialize/inline_container.cc``); the facts it follows:

- records in the order ``data.pkl``, ``.format_version`` ("1"), ``.storage_alignment`` ("64"),
  ``byteorder`` ("little"), the storages in pickle order, ``version`` ("3\\n"),
  ``.data/serialization_id``;
- each record: a local header with zero time, date, CRC and sizes and flags 0x0808 (UTF-8 names,
  sizes in a data descriptor after the data), then an extra field ``FB`` padded with ``Z`` so that
  the data starts at a multiple of 64 bytes, the data, and a data descriptor (CRC-32 and 32-bit
  sizes; 64-bit sizes, and a zip64 extra field before the padding, once a record or its offset
  reaches 4 GiB);
- a central directory of plain entries (version fields, attributes and time zero), a zip64 end
  record and locator (always: torch opens the archive in zip64 mode), the end record;
- ``.data/serialization_id``: 20 decimal digits of a hash over the record names (libstdc++'s
  ``std::hash<std::string>`` combined with ``c10::hash_combine`` in the iteration order of the
  ``std::unordered_set`` torch keeps them in), then 20 digits of the CRCs combined the same way, in
  writing order, counting every write that starts with the data-descriptor signature.

Reading parses the end records and the central directory, bounded, and checks every record against
its local header before any data is touched; records are mapped or read on demand.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import CheckpointError
from .safetensors import MAP_MIN_BYTES, map_private, read_exact

ALIGNMENT = 64
FORMAT_VERSION = b"1"
ARCHIVE_VERSION = b"3\n"
SERIALIZATION_ID = ".data/serialization_id"
_LOCAL, _DESCRIPTOR, _CENTRAL = 0x04034B50, 0x08074B50, 0x02014B50
_ZIP64_END, _ZIP64_LOCATOR, _END = 0x06064B50, 0x07064B50, 0x06054B50
_FLAGS = 0x0808  # sizes in a data descriptor, UTF-8 names
_U32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1

# --- the serialization id ---------------------------------------------------------------------

#: the bucket counts a libstdc++ unordered_set grows through when filled one element at a time
#: (its prime rehash policy: 13 buckets at the first insert, then the listed prime >= 2 x buckets)
_BUCKET_GROWTH = (13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043)
#: the most records whose serialization id is reproduced (the hash table sizes above)
MAX_WRITTEN_RECORDS = _BUCKET_GROWTH[-1]


def std_string_hash(data: bytes) -> int:
    """libstdc++'s ``std::hash<std::string>`` on 64-bit platforms (``_Hash_bytes``, seed 0xc70f6907)."""
    mul = (0xC6A4A793 << 32) + 0x5BD1E995
    n = len(data)
    h = (0xC70F6907 ^ (n * mul)) & _M64
    whole = n & ~7
    for p in range(0, whole, 8):
        d = (int.from_bytes(data[p : p + 8], "little") * mul) & _M64
        h = ((h ^ ((d ^ (d >> 47)) * mul & _M64)) * mul) & _M64
    if n & 7:
        h = ((h ^ int.from_bytes(data[whole:], "little")) * mul) & _M64
    h = ((h ^ (h >> 47)) * mul) & _M64
    return h ^ (h >> 47)


def hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` on 64-bit values."""
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _M64)) & _M64


def unordered_set_order(names: list[str]) -> list[str]:
    """The iteration order of a libstdc++ ``std::unordered_set<std::string>`` after inserting ``names``
    in turn: each new element goes to the front of its bucket, or to the front of the list when its
    bucket is empty; a rehash relinks the list front to back into the new buckets the same way."""
    if len(names) > _BUCKET_GROWTH[-1]:
        raise ValueError(f"{len(names)} records: beyond the hash table sizes reproduced here")
    codes = {n: std_string_hash(n.encode("utf-8")) for n in names}
    nxt: dict[str | None, str | None] = {None: None}  # None is the list head
    buckets: dict[int, str | None] = {}  # bucket -> the node before its first element
    count = 1

    def link(node: str, table: dict[int, str | None], size: int) -> None:
        b = codes[node] % size
        if b in table:
            before = table[b]
            nxt[node], nxt[before] = nxt[before], node
        else:
            nxt[node], nxt[None] = nxt[None], node
            if nxt[node] is not None:
                table[codes[nxt[node]] % size] = node
            table[b] = None

    for i, name in enumerate(names):
        if i + 1 > (count if count > 1 else 0):
            count = _BUCKET_GROWTH[0] if count == 1 else _BUCKET_GROWTH[_BUCKET_GROWTH.index(count) + 1]
            node, nxt[None], buckets = nxt[None], None, {}
            while node is not None:  # rehash: front to back, each node relinked as inserted
                following = nxt[node]
                link(node, buckets, count)
                node = following
        link(name, buckets, count)
    order, node = [], nxt[None]
    while node is not None:
        order.append(node)
        node = nxt[node]
    return order


def serialization_id(names: list[str], crcs: list[int]) -> bytes:
    name_hash = 0
    for name in unordered_set_order(names):
        name_hash = hash_combine(name_hash, std_string_hash(name.encode("utf-8")))
    crc_hash = 0
    for crc in crcs:
        crc_hash = hash_combine(crc_hash, crc)
    return f"{name_hash:020d}{crc_hash:020d}".encode()


# --- writing ----------------------------------------------------------------------------------


def _zip64_extra(size: int, written: int, offset: int) -> bytes:
    """miniz's zip64 extra field: the sizes when a record reaches 4 GiB, the offset when it starts there."""
    fields = (struct.pack("<QQ", size, written) if size >= _U32 else b"") + (struct.pack("<Q", offset) if offset >= _U32 else b"")
    return struct.pack("<HH", 1, len(fields)) + fields


class TorchArchiveWriter:
    """Writes the records of one ``torch.save`` archive in turn; :meth:`close` adds torch's closing
    records and the directory. ``stem``: the folder inside the archive (torch: the file's stem)."""

    def __init__(self, path: Path, stem: str) -> None:
        self.path = path
        self.stem = stem
        self._file: BinaryIO = open(path, "wb")
        self._pos = 0
        self._names: list[str] = []
        self._crcs: list[int] = []  # what torch's write hook combines, in order
        self._central: list[bytes] = []

    def add(self, name: str, data) -> None:
        """One stored record (``data``: bytes or a contiguous numpy array)."""
        view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
        size, offset = view.nbytes, self._pos
        full = f"{self.stem}/{name}".encode("utf-8")
        big = size >= _U32 or offset >= _U32
        zip64 = _zip64_extra(size, 0, offset) if big else b""  # sizes still zero in the local header
        start = offset + 30 + len(full) + len(zip64) + 4
        padding = -start % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        local = struct.pack("<IHHHHHIIIHH", _LOCAL, 0, _FLAGS if size else 0x0800, 0, 0, 0, 0, 0, 0, len(full), len(extra))
        self._write(local + full + extra)
        crc = zlib.crc32(view)
        if size:
            if view[:4] == struct.pack("<I", _DESCRIPTOR) and size >= 8:
                self._crcs.append(int.from_bytes(view[4:8], "little"))  # torch's hook takes it for a descriptor
            self._write(view)
            sizes = struct.pack("<QQ", size, size) if big else struct.pack("<II", size, size)
            self._write(struct.pack("<II", _DESCRIPTOR, crc) + sizes)
            self._crcs.append(crc)
        central_extra = _zip64_extra(size, size, offset) if big else b""
        self._central.append(
            struct.pack("<IHHHHHHIIIHHHHHII", _CENTRAL, 0, 0, _FLAGS if size else 0x0800, 0, 0, 0, crc,
                        min(size, _U32), min(size, _U32), len(full), len(central_extra), 0, 0, 0, 0, min(offset, _U32))
            + full + central_extra
        )  # fmt: skip
        self._names.append(name)

    def _write(self, data) -> None:
        self._file.write(data)
        self._pos += memoryview(data).nbytes

    def close(self) -> None:
        self.add("version", ARCHIVE_VERSION)
        self.add(SERIALIZATION_ID, serialization_id(self._names, self._crcs))
        directory = b"".join(self._central)
        start, count = self._pos, len(self._central)
        self._write(directory)
        end64 = self._pos
        self._write(struct.pack("<IQHHIIQQQQ", _ZIP64_END, 44, 0x031E, 0x002D, 0, 0, count, count, len(directory), start))
        self._write(struct.pack("<IIQI", _ZIP64_LOCATOR, 0, end64, 1))
        self._write(struct.pack("<IHHHHIIH", _END, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                min(len(directory), _U32), min(start, _U32), 0))  # fmt: skip
        self._file.close()

    def abort(self) -> None:
        self._file.close()


# --- reading ----------------------------------------------------------------------------------

#: bounds on what an archive may declare before anything is read: far above any model's tensor count
MAX_RECORDS = 1 << 20
MAX_DIRECTORY_BYTES = 1 << 28
MAX_NAME_BYTES = 4096
_TAIL = 22 + 0xFFFF  # the end record and the longest comment it may carry


@dataclass(frozen=True)
class ArchiveRecord:
    name: str  # inside the archive's folder
    data_offset: int
    size: int
    crc: int


class TorchArchive:
    """A validated view of one ``torch.save`` zip archive: its folder, and each record's place."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except OSError as exc:
            raise CheckpointError(self.path, f"cannot read: {exc.strerror or exc}") from None
        start, count, length = self._directory(size)
        raw = bytes(read_exact(self.path, start, length))
        self.records: dict[str, ArchiveRecord] = {}
        self.stem = ""
        pos = 0
        for _ in range(count):
            record, pos = self._entry(raw, pos, start)
            if record.name in self.records:
                raise self._bad(f"record {record.name!r} appears twice")
            self.records[record.name] = record
        if pos != length:
            raise self._bad(f"the central directory holds {length - pos} bytes after its {count} entries")

    def _bad(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"not a torch.save archive: {problem}")

    def _directory(self, size: int) -> tuple[int, int, int]:
        """(offset, entries, bytes) of the central directory, from the end records."""
        tail_start = max(0, size - _TAIL)
        tail = bytes(read_exact(self.path, tail_start, size - tail_start))
        at = len(tail)
        while True:  # the last end record whose comment length reaches exactly to the end of the file
            at = tail.rfind(struct.pack("<I", _END), 0, at)
            if at < 0:
                raise self._bad("no end of central directory record (not a zip file, or truncated)")
            if at + 22 <= len(tail) and struct.unpack_from("<H", tail, at + 20)[0] == len(tail) - at - 22:
                break
        _, _, _, _, count, length, start, _ = struct.unpack_from("<IHHHHIIH", tail, at)
        end = tail_start + at
        locator = end - 20
        if locator >= 0 and bytes(read_exact(self.path, locator, 4)) == struct.pack("<I", _ZIP64_LOCATOR):
            _, _, where, _ = struct.unpack("<IIQI", bytes(read_exact(self.path, locator, 20)))
            if where + 56 > locator:
                raise self._bad("the zip64 locator points past itself")
            record = bytes(read_exact(self.path, where, 56))
            sig, _, _, _, _, _, _, count, length, start = struct.unpack("<IQHHIIQQQQ", record)
            if sig != _ZIP64_END:
                raise self._bad("the zip64 locator points to no zip64 end record")
            end = where
        if count > MAX_RECORDS or length > MAX_DIRECTORY_BYTES or count * 46 > length:
            raise self._bad(f"a central directory of {count} entries in {length} bytes")
        if start + length > end:
            raise self._bad(f"the central directory ({length} bytes at {start}) runs past its end record at {end}")
        return start, count, length

    def _entry(self, raw: bytes, pos: int, directory: int) -> tuple[ArchiveRecord, int]:
        if pos + 46 > len(raw) or struct.unpack_from("<I", raw, pos)[0] != _CENTRAL:
            raise self._bad(f"central directory entry at byte {directory + pos} is malformed")
        (_, _, _, flags, method, _, _, crc, comp, size, n_name, n_extra, n_comment, _, _, _, offset) = struct.unpack_from(
            "<IHHHHHHIIIHHHHHII", raw, pos
        )
        end = pos + 46 + n_name + n_extra + n_comment
        if end > len(raw) or n_name > MAX_NAME_BYTES:
            raise self._bad(f"central directory entry at byte {directory + pos} runs past the directory")
        try:
            full = raw[pos + 46 : pos + 46 + n_name].decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad(f"a record name at byte {directory + pos} is not UTF-8") from None
        size, comp, offset = self._zip64(raw[pos + 46 + n_name : pos + 46 + n_name + n_extra], size, comp, offset, full)
        stem, _, name = full.partition("/")
        if not stem or not name:
            raise self._bad(f"record {full!r:.80} is not inside the archive's folder")
        if self.stem and stem != self.stem:
            raise self._bad(f"records in two folders, {self.stem!r:.80} and {stem!r:.80}")
        self.stem = stem
        if method != 0 or comp != size or flags & 1:
            raise self._bad(f"record {full!r:.80} is compressed or encrypted (torch.save stores records as they are)")
        local = bytes(read_exact(self.path, offset, 30)) if offset + 30 <= directory else b""
        if len(local) != 30 or struct.unpack_from("<I", local)[0] != _LOCAL:
            raise self._bad(f"record {full!r:.80} has no local header at byte {offset}")
        n_local, e_local = struct.unpack_from("<HH", local, 26)
        if bytes(read_exact(self.path, offset + 30, n_local)) != full.encode("utf-8"):
            raise self._bad(f"record {full!r:.80}: its local header names another record")
        data = offset + 30 + n_local + e_local
        if data + size > directory:
            raise self._bad(f"record {full!r:.80} ({size} bytes at {data}) runs into the central directory")
        return ArchiveRecord(name, data, size, crc), end

    def _zip64(self, extra: bytes, size: int, comp: int, offset: int, name: str) -> tuple[int, int, int]:
        """Sizes and offset from a zip64 extra field, where the 32-bit fields say they are there."""
        wanted = [v == _U32 for v in (size, comp, offset)]
        if not any(wanted):
            return size, comp, offset
        pos = 0
        while pos + 4 <= len(extra):
            tag, n = struct.unpack_from("<HH", extra, pos)
            if tag == 1:
                values = [size, comp, offset]
                at = pos + 4
                for i, want in enumerate(wanted):
                    if want:
                        if at + 8 > pos + 4 + n or at + 8 > len(extra):
                            raise self._bad(f"record {name!r:.80}: zip64 extra field too short")
                        values[i] = struct.unpack_from("<Q", extra, at)[0]
                        at += 8
                return values[0], values[1], values[2]
            pos += 4 + n
        raise self._bad(f"record {name!r:.80}: 4 GiB sizes without a zip64 extra field")

    def record(self, name: str) -> ArchiveRecord:
        if name not in self.records:
            raise self._bad(f"no record {self.stem}/{name}")
        return self.records[name]

    def read(self, name: str, check_crc: bool = True) -> np.ndarray:
        """A record's bytes, flat uint8 (big ones mapped copy-on-write), its CRC-32 checked."""
        r = self.record(name)
        if not r.size:
            return np.empty(0, dtype=np.uint8)
        buf = map_private(self.path, r.data_offset, r.size, name) if r.size >= MAP_MIN_BYTES else read_exact(self.path, r.data_offset, r.size, name)
        if check_crc and zlib.crc32(buf) != r.crc:
            raise CheckpointError(self.path, f"record {self.stem}/{name} does not match its CRC-32 (damaged file)")
        return np.frombuffer(buf, dtype=np.uint8)
