"""The ``data.pkl`` of a ``torch.save``\\ d dict of tensors: written as torch's pickler writes it, read
without unpickling.

``torch.save({name: tensor, ...})`` pickles the dict with protocol 2. Each tensor is reduced to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())``
where the storage is a persistent id ``("storage", torch.<Type>Storage, key, location, numel)``
whose bytes are the archive record ``data/<key>``. :func:`dict_pickle` writes exactly the opcodes
CPython's pickler emits for such a dict of fresh, contiguous tensors (its memo included: a string,
global or tuple met again is fetched, not written again), so the bytes equal torch's.

:func:`read_dict_pickle` never executes a pickle. It runs a small, bounded interpreter over the
opcodes that stream can hold, building plain descriptions instead of objects: the only globals it
accepts are the rebuild function, ``collections.OrderedDict`` and torch's storage types, the only
calls the two that rebuild a tensor and an empty hook dict; anything else is refused in one line
naming the file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..dtypes import itemsize
from ..errors import CheckpointError

#: torch's storage type per element type (safetensors name)
STORAGE_TYPES = {
    "BF16": "BFloat16Storage", "F16": "HalfStorage", "F32": "FloatStorage", "F64": "DoubleStorage",
    "I8": "CharStorage", "U8": "ByteStorage", "I16": "ShortStorage", "I32": "IntStorage",
    "I64": "LongStorage", "BOOL": "BoolStorage",
}  # fmt: skip
_DTYPE_OF_STORAGE = {v: k for k, v in STORAGE_TYPES.items()}
REBUILD = ("torch._utils", "_rebuild_tensor_v2")
HOOKS = ("collections", "OrderedDict")
#: pickle batches dict items by this many (CPython's BATCHSIZE)
BATCH = 1000


@dataclass(frozen=True)
class SavedTensor:
    """One tensor of a saved dict: its key, element type, shape; its storage ``data/<storage>``."""

    key: str
    dtype_name: str
    shape: tuple[int, ...]
    storage: str = ""
    offset: int = 0  # in elements
    storage_numel: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype_name)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


# --- writing ----------------------------------------------------------------------------------


class _Pickler:
    """Protocol-2 opcodes with CPython's memo numbering; shared objects are memoized by a label."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo: dict[object, int] = {}
        self.count = 0

    def put(self, label: object = None) -> None:
        if label is not None:
            self.memo[label] = self.count
        self.out += b"q" + bytes([self.count]) if self.count < 256 else b"r" + struct.pack("<I", self.count)
        self.count += 1

    def get(self, label: object) -> bool:
        """Fetch a memoized shared object; False if it is new (the caller writes it, then ``put``)."""
        if label not in self.memo:
            return False
        i = self.memo[label]
        self.out += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        return True

    def text(self, value: str, shared: bool = False) -> None:
        if shared and self.get(("str", value)):
            return
        data = value.encode("utf-8", "surrogatepass")
        self.out += b"X" + struct.pack("<I", len(data)) + data
        self.put(("str", value) if shared else None)

    def integer(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += b"K" + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += b"M" + struct.pack("<H", value)
        elif -(2**31) <= value < 2**31:
            self.out += b"J" + struct.pack("<i", value)
        else:
            data = value.to_bytes((value.bit_length() >> 3) + 1, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data

    def ints(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"  # the empty tuple is never memoized
            return
        if len(values) > 3:
            self.out += b"("
        for v in values:
            self.integer(v)
        self.out += b"t" if len(values) > 3 else b"\x85\x86\x87"[len(values) - 1 : len(values)]
        self.put()

    def global_(self, module: str, name: str) -> None:
        if not self.get(("global", module, name)):
            self.out += b"c" + f"{module}\n{name}\n".encode()
            self.put(("global", module, name))

    def tensor(self, t: SavedTensor) -> None:
        self.global_(*REBUILD)
        self.out += b"(("
        self.text("storage", shared=True)
        self.global_("torch", STORAGE_TYPES[t.dtype_name])
        self.text(t.storage)
        self.text("cpu", shared=True)
        self.integer(t.storage_numel or t.numel)
        self.out += b"t"
        self.put()
        self.out += b"Q"
        self.integer(t.offset)
        self.ints(t.shape)
        self.ints(contiguous_strides(t.shape))
        self.out += b"\x89"  # requires_grad=False
        self.global_(*HOOKS)
        self.out += b")R"
        self.put()
        self.out += b"t"
        self.put()
        self.out += b"R"
        self.put()


def dict_pickle(tensors: list[SavedTensor]) -> bytes:
    """The ``data.pkl`` torch.save writes for ``{t.key: tensor}`` (each tensor its own storage ``t.storage``)."""
    p = _Pickler()
    p.out += b"}"
    p.put()
    if len(tensors) == 1:
        p.text(tensors[0].key)
        p.tensor(tensors[0])
        p.out += b"s"
    elif tensors:
        start = 0
        while True:  # batches of BATCH items; a full last batch is followed by an empty one
            batch = tensors[start : start + BATCH]
            p.out += b"("
            for t in batch:
                p.text(t.key)
                p.tensor(t)
            p.out += b"u"
            if len(batch) < BATCH:
                break
            start += BATCH
    p.out += b"."
    return bytes(p.out)


# --- reading, without unpickling ----------------------------------------------------------------

MAX_PICKLE_BYTES = 64 << 20
MAX_STACK = 2 * BATCH + 32  # a batch of dict items sits on the stack whole
MAX_MARKS = 4
MAX_MEMO = 1 << 22
MAX_TEXT = 1 << 16
MAX_DIMS = 8
_STORAGE_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_.-")


class _Mark:
    pass


class _Hooks:
    """An empty ``OrderedDict()``: the backward hooks every saved tensor carries."""


_MARK, _HOOKS_VALUE = _Mark(), _Hooks()


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(frozen=True)
class _Storage:
    dtype_name: str
    key: str
    numel: int


class _Reader:
    def __init__(self, data: bytes, path: Path, what: str) -> None:
        self.data, self.path, self.what = data, path, what
        self.pos = 0
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.result: dict[str, SavedTensor] | None = None
        self.storages: dict[str, _Storage] = {}

    def bad(self, problem: str) -> CheckpointError:
        return CheckpointError(self.path, f"{self.what}: {problem} (not what torch.save writes for a dict of tensors)")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.bad("the pickle ends in the middle of an opcode")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def push(self, value: object) -> None:
        if len(self.stack) >= MAX_STACK:
            raise self.bad(f"more than {MAX_STACK} values on the pickle stack")
        self.stack.append(value)

    def pop(self) -> object:
        if not self.stack or self.stack[-1] is _MARK:
            raise self.bad("an opcode takes a value the stack does not hold")
        return self.stack.pop()

    def pop_mark(self) -> list[object]:
        if _MARK not in self.stack:
            raise self.bad("a tuple or batch without its mark")
        at = len(self.stack) - 1 - self.stack[::-1].index(_MARK)
        items = self.stack[at + 1 :]
        del self.stack[at:]
        return items

    def run(self) -> list[SavedTensor]:
        if self.take(2) != b"\x80\x02":
            raise self.bad("not a protocol 2 pickle")
        while True:
            at = self.pos
            op = self.take(1)
            handler = _OPS.get(op)
            if handler is None:
                raise self.bad(f"opcode {op!r} at byte {at}")
            if handler(self):
                break
        if self.pos != len(self.data):
            raise self.bad(f"{len(self.data) - self.pos} bytes after the end of the pickle")
        return list(self.result.values()) if self.result is not None else []

    # --- opcodes (each returns True at STOP) ---

    def stop(self) -> bool:
        if len(self.stack) != 1 or self.stack[0] is not self.result or self.result is None:
            raise self.bad("the pickle does not end with one dict")
        return True

    def empty_dict(self) -> None:
        if self.result is not None or self.stack:
            raise self.bad("a dict other than the saved one")
        self.result = {}
        self.push(self.result)

    def put(self, wide: bool) -> None:
        index = struct.unpack("<I", self.take(4))[0] if wide else self.take(1)[0]
        if not self.stack or self.stack[-1] is _MARK or (index not in self.memo and len(self.memo) >= MAX_MEMO):
            raise self.bad("a memo entry without a value, or too many")
        self.memo[index] = self.stack[-1]

    def get(self, wide: bool) -> None:
        index = struct.unpack("<I", self.take(4))[0] if wide else self.take(1)[0]
        if index not in self.memo or self.memo[index] is self.result:
            raise self.bad(f"memo entry {index} fetched before it was stored, or the dict itself")
        self.push(self.memo[index])

    def text(self) -> None:
        n = struct.unpack("<I", self.take(4))[0]
        if n > MAX_TEXT:
            raise self.bad(f"a string of {n} bytes")
        try:
            self.push(self.take(n).decode("utf-8"))
        except UnicodeDecodeError:
            raise self.bad("a string that is not UTF-8") from None

    def integer(self, fmt: str, n: int) -> None:
        self.push(struct.unpack(fmt, self.take(n))[0])

    def long1(self) -> None:
        n = self.take(1)[0]
        if n > 8:
            raise self.bad(f"an integer of {n} bytes")
        self.push(int.from_bytes(self.take(n), "little", signed=True))

    def global_(self) -> None:
        lines = []
        for _ in range(2):
            end = self.data.find(b"\n", self.pos, self.pos + 256)
            if end < 0:
                raise self.bad("a global name that does not end")
            lines.append(self.take(end - self.pos + 1)[:-1].decode("ascii", "replace"))
        g = _Global(*lines)
        if (g.module, g.name) not in (REBUILD, HOOKS) and not (g.module == "torch" and g.name in _DTYPE_OF_STORAGE):
            raise self.bad(f"the pickle names {g.module}.{g.name}"[:200])
        self.push(g)

    def tuple_(self, n: int | None) -> None:
        items = self.pop_mark() if n is None else [self.pop() for _ in range(n)][::-1]
        if len(items) > 16:
            raise self.bad(f"a tuple of {len(items)} items")
        self.push(tuple(items))

    def persistent(self) -> None:
        pid = self.pop()
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Global)
                and pid[1].module == "torch" and pid[1].name in _DTYPE_OF_STORAGE and isinstance(pid[2], str)
                and 0 < len(pid[2]) <= 64 and set(pid[2]) <= _STORAGE_KEY_CHARS and isinstance(pid[3], str)
                and _whole(pid[4])):  # fmt: skip
            raise self.bad("a persistent id that is not a torch storage")
        storage = _Storage(_DTYPE_OF_STORAGE[pid[1].name], pid[2], pid[4])
        if self.storages.setdefault(storage.key, storage) != storage:
            raise self.bad(f"storage {storage.key} is named with two types or sizes")
        self.push(storage)

    def reduce(self) -> None:
        args, call = self.pop(), self.pop()
        if call == _Global(*HOOKS) and args == ():
            self.push(_HOOKS_VALUE)
        elif call == _Global(*REBUILD) and isinstance(args, tuple):
            self.push(self.tensor(args))
        else:
            raise self.bad("a call other than rebuilding a tensor")

    def tensor(self, args: tuple) -> SavedTensor:
        if not (len(args) == 6 and isinstance(args[0], _Storage) and _whole(args[1]) and _dims(args[2])
                and _dims(args[3]) and isinstance(args[4], bool) and args[5] is _HOOKS_VALUE):  # fmt: skip
            raise self.bad("a tensor rebuilt from other arguments than storage, offset, size, stride, flag, hooks")
        storage, offset, shape = args[0], args[1], args[2]
        if args[3] != contiguous_strides(shape):
            raise self.bad(f"a tensor of shape {list(shape)} with strides {list(args[3])} (not contiguous)")
        if offset + math.prod(shape) > storage.numel:
            raise self.bad(f"a tensor of shape {list(shape)} at element {offset} of a storage of {storage.numel}")
        return SavedTensor("", storage.dtype_name, shape, storage.key, offset, storage.numel)

    def setitems(self, batch: bool) -> None:
        items = self.pop_mark() if batch else [self.pop() for _ in range(2)][::-1]
        if len(items) % 2 or not self.stack or self.stack[-1] is not self.result:
            raise self.bad("items set on something other than the saved dict")
        for key, value in zip(items[::2], items[1::2]):
            if not isinstance(key, str) or not isinstance(value, SavedTensor):
                raise self.bad("a dict entry that is not a name and a tensor")
            if key in self.result:
                raise self.bad(f"key {key!r:.80} twice")
            self.result[key] = SavedTensor(key, value.dtype_name, value.shape, value.storage, value.offset, value.storage_numel)


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62


def _dims(v: object) -> bool:
    return isinstance(v, tuple) and len(v) <= MAX_DIMS and all(_whole(d) for d in v)


_OPS = {
    b".": _Reader.stop, b"}": _Reader.empty_dict, b")": lambda r: r.push(()), b"(": lambda r: r.push(_MARK),
    b"q": lambda r: r.put(False), b"r": lambda r: r.put(True), b"h": lambda r: r.get(False), b"j": lambda r: r.get(True),
    b"X": _Reader.text, b"K": lambda r: r.integer("<B", 1), b"M": lambda r: r.integer("<H", 2),
    b"J": lambda r: r.integer("<i", 4), b"\x8a": _Reader.long1, b"c": _Reader.global_,
    b"t": lambda r: r.tuple_(None), b"\x85": lambda r: r.tuple_(1), b"\x86": lambda r: r.tuple_(2),
    b"\x87": lambda r: r.tuple_(3), b"Q": _Reader.persistent, b"\x88": lambda r: r.push(True),
    b"\x89": lambda r: r.push(False), b"R": _Reader.reduce, b"s": lambda r: r.setitems(False),
    b"u": lambda r: r.setitems(True),
}  # fmt: skip


def read_dict_pickle(data: bytes, path: str | Path, what: str = "data.pkl") -> list[SavedTensor]:
    """The tensors a ``torch.save``\\ d dict's pickle describes, in its order; a CheckpointError naming
    ``path`` for anything else. Nothing is imported or called."""
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(path, f"{what}: {len(data)} bytes, more than a dict of tensors needs")
    return _Reader(bytes(data), Path(path), what).run()
