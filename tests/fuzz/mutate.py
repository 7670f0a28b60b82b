"""Deterministic mutators: raw bytes, JSON structure, safetensors header, GGUF header fields.

Every function takes a ``random.Random`` and returns new bytes; the same generator state always
gives the same output, so a campaign is reproducible from its seed alone.
"""

from __future__ import annotations

import json
import random
import struct

INTERESTING_INTS = [
    0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 64, 127, 128, 255, 256, 1023, 1024, 4096, 65535, 65536,
    10**6, 10**9, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
]
INTERESTING_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x22, 0x5B, 0x7B, 0x5C, 0x30, 0x39, 0x2D, 0x2E, 0x65, 0xC0, 0xED]


def _deep(depth: int, open_: str = "[", close: str = "]", inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


#: JSON texts that have broken JSON readers: huge, deep, non-finite, mistyped, overlong.
ODD_JSON = [
    "0", "-1", "1", "2", "3", "-0", "0.5", "1.5", "2.0", "1e400", "-1e400", "1e-400", "Infinity", "-Infinity", "NaN",
    "18446744073709551616", "18446744073709551615", "9223372036854775808", "1000000000", "1000000000000",
    "4294967296", "1" * 4400, "9" * 70, "-" + "9" * 70, "1." + "0" * 80, "null", "true", "false", '""', '"0"',
    '"BF16"', '["BF16"]', '{"BF16": 1}', "[]", "{}", "[1]", "[0]", "[-1]", "[1, 2]", "[[1]]", '{"a": 1}',
    '"' + "a" * 300 + '"', '"' + "x" * 70000 + '"', '"\\ud800"', '"\\u0000"', '"../../etc/passwd"', '"/etc/passwd"',
    '"model.safetensors"', '"a/b"', '"."', '".."', '"' + "é" * 200 + '"', "[" + ",".join(["1"] * 5000) + "]",
    _deep(1200), _deep(100), _deep(1200, '{"a":', "}"), _deep(3000, "[", "]", "{}"), '[' * 20000,
]


def _positions(rng: random.Random, data: bytes, hot: int) -> int:
    """A position to mutate, mostly inside the first ``hot`` bytes (the header) when given."""
    if hot and rng.random() < 0.85:
        return rng.randrange(max(1, min(hot, len(data))))
    return rng.randrange(max(1, len(data)))


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes], hot: int = 0) -> bytes:
    """One to a few generic byte-level edits: flips, interesting bytes and integers, inserts, cuts, splices."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if not buf:
            buf += bytes([rng.randrange(256)])
        op = rng.randrange(10)
        pos = _positions(rng, buf, hot)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice(INTERESTING_BYTES)
        elif op == 2:
            buf[pos] = rng.randrange(256)
        elif op == 3:
            width, fmt = rng.choice(((4, "<I"), (8, "<Q")))
            value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
            buf[pos : pos + width] = struct.pack(fmt, value)
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 5:
            del buf[pos : pos + rng.randrange(1, 64)]
        elif op == 6:
            n = rng.randrange(1, 64)
            buf[pos:pos] = buf[pos : pos + n]
        elif op == 7:
            del buf[pos:]
        elif op == 8:
            other = rng.choice(others) if others else data
            cut = rng.randrange(max(1, len(other)))
            buf[pos:] = other[cut:]
        else:
            buf[pos] = ord(rng.choice('"{}[],:0123456789-eE.tfn\\'))
    return bytes(buf)


# --- JSON --------------------------------------------------------------------------------------------

_HOLE = "\u0000bitconvert-fuzz-hole\u0000"


def _nodes(value, path=(), out=None, limit=4000):
    """Paths to every node of a parsed JSON value (up to ``limit``), numbers listed twice: they matter most."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out.append(path)
    if isinstance(value, dict):
        for k, v in value.items():
            _nodes(v, path + (k,), out, limit)
    elif isinstance(value, list):
        for i, v in enumerate(value[:50]):
            _nodes(v, path + (i,), out, limit)
    return out


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
    else:
        copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def mutate_json_value(rng: random.Random, text: bytes) -> bytes:
    """Replace one node (often a number) by an odd literal, drop or duplicate a key, or retype a node."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return mutate_bytes(rng, text, [])
    path = rng.choice(_nodes(value))
    op = rng.randrange(6)
    if op <= 2:
        odd = rng.choice(ODD_JSON)
        out = json.dumps(_replace(value, path, _HOLE))
        return out.replace(json.dumps(_HOLE), odd, 1).encode("utf-8")
    if op == 3 and path:  # delete the node
        parent = _get(value, path[:-1])
        parent = dict(parent) if isinstance(parent, dict) else list(parent)
        del parent[path[-1]]
        return json.dumps(_replace(value, path[:-1], parent)).encode("utf-8")
    if op == 4 and path and isinstance(path[-1], str):  # the key appears twice, the second with an odd value
        out = json.dumps(_replace(value, path, _HOLE))
        dup = json.dumps(path[-1]) + ": " + rng.choice(ODD_JSON) + ", " + json.dumps(path[-1]) + ": "
        return out.replace(json.dumps(path[-1]) + ": " + json.dumps(_HOLE), dup + rng.choice(ODD_JSON), 1).encode()
    node = _get(value, path)  # retype: wrap in a list, stringify, or lift a child into its place
    wrapped = rng.choice(([node], str(node), {"value": node}, node * 2 if isinstance(node, (int, str, list)) else None))
    return json.dumps(_replace(value, path, wrapped)).encode("utf-8")


def _get(value, path):
    for p in path:
        value = value[p]
    return value


def mutate_json(rng: random.Random, text: bytes, others: list[bytes]) -> bytes:
    if rng.random() < 0.6:
        out = mutate_json_value(rng, text)
        return mutate_json_value(rng, out) if rng.random() < 0.2 else out
    return mutate_bytes(rng, text, others)


# --- safetensors ---------------------------------------------------------------------------------------


def mutate_safetensors(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    header, body = data[8 : 8 + n], data[8 + n :]
    op = rng.random()
    if op < 0.5:  # a structural edit of the header JSON, mostly with its length kept right
        new = mutate_json_value(rng, header)
        length = len(new) if rng.random() < 0.8 else rng.choice(INTERESTING_INTS + [len(new) + 1, len(new) - 1])
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + b"\0" * rng.randrange(1, 64)
        return (length % 2**64).to_bytes(8, "little") + new + body
    if op < 0.6:  # only the length changes
        return (rng.choice(INTERESTING_INTS + [n + 1, n - 1, n + 8]) % 2**64).to_bytes(8, "little") + data[8:]
    return mutate_bytes(rng, data, others, hot=8 + n)


# --- GGUF ----------------------------------------------------------------------------------------------

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_fields(data: bytes) -> tuple[list[tuple[int, int, str]], int]:
    """Offsets of the header's integer fields (offset, width, kind) and the header's end.

    A small independent walker over the seed (which is well formed): it exists so the fuzzer can
    aim at counts, lengths, types, dimensions and offsets rather than hit them by chance.
    """
    fields: list[tuple[int, int, str]] = [(4, 4, "version"), (8, 8, "count"), (16, 8, "count")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(pos: int) -> int:
        fields.append((pos, 8, "length"))
        return pos + 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(pos: int, vtype: int) -> int:
        if vtype in _SCALAR:
            fields.append((pos, _SCALAR[vtype], f"value{vtype}"))
            return pos + _SCALAR[vtype]
        if vtype == 8:
            return string(pos)
        item = struct.unpack_from("<I", data, pos)[0]
        count = struct.unpack_from("<Q", data, pos + 4)[0]
        fields.extend([(pos, 4, "type"), (pos + 4, 8, "count")])
        pos += 12
        for i in range(count):
            start = len(fields)
            pos = value(pos, item)
            if i > 8:
                del fields[start:]  # keep the field list short: the first items of an array are enough
        return pos

    for _ in range(n_kv):
        pos = string(pos)
        vtype = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, 4, "type"))
        pos = value(pos + 4, vtype)
    for _ in range(n_tensors):
        pos = string(pos)
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, 4, "ndims"))
        pos += 4
        for _ in range(n_dims):
            fields.append((pos, 8, "dim"))
            pos += 8
        fields.extend([(pos, 4, "type"), (pos + 4, 8, "offset")])
        pos += 12
    return fields, pos


def mutate_gguf(rng: random.Random, data: bytes, others: list[bytes], fields: list[tuple[int, int, str]], end: int) -> bytes:
    if rng.random() < 0.5:
        buf = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 3))):
            pos, width, kind = rng.choice(fields)
            if kind == "value6":  # float32: non-finite, zero, negative
                buf[pos : pos + 4] = struct.pack("<f", rng.choice((float("nan"), float("inf"), 0.0, -1.0, 1e30)))
                continue
            value = rng.choice(INTERESTING_INTS)
            old = int.from_bytes(buf[pos : pos + width], "little")
            value = rng.choice((value, old + 1, old - 1, old * 2, old + 2**32)) if rng.random() < 0.3 else value
            buf[pos : pos + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
        return bytes(buf)
    return mutate_bytes(rng, data, others, hot=end)


# --- torch.save archives (bitnet-gpu) ----------------------------------------------------------------

#: globals a hostile pickle might name, and torch's own (the reader accepts only the latter)
ODD_GLOBALS = [b"os\nsystem\n", b"builtins\neval\n", b"posix\nsystem\n", b"torch._utils\n_rebuild_parameter\n",
               b"torch\nFloatStorage\n", b"torch\nCharStorage\n", b"collections\nOrderedDict\n", b"torch\ndevice\n",
               b"torch._utils\n_rebuild_tensor_v2\n", b"numpy.core.multiarray\n_reconstruct\n"]  # fmt: skip
#: opcodes torch's pickles hold and others (protocol 0-5)
PICKLE_OPCODES = b"().}]qrhjXKMJ\x8actR\x85\x86\x87Qsu\x88\x89NIFLSVUTBCGabeilopg\x80\x8c\x8d\x8e\x93\x94\x95\x96\x97\x98"
_records: dict[int, list[tuple[str, bytes]]] = {}


def _archive_records(data: bytes) -> list[tuple[str, bytes]]:
    """The records of a (valid, seed) torch.save archive, in order."""
    import io
    import zipfile

    key = hash(data)
    if key not in _records:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            _records[key] = [(i.filename, z.read(i)) for i in z.infolist()]
    return _records[key]


def _rebuilt(records: list[tuple[str, bytes]]) -> bytes:
    """An archive of these records as torch.save lays them out (the closing records recomputed)."""
    import tempfile
    from pathlib import Path

    from bitconvert.io.torch_archive import SERIALIZATION_ID, TorchArchiveWriter

    stem = records[0][0].split("/", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        w = TorchArchiveWriter(Path(tmp) / "a.pt", stem)
        for name, payload in records:
            inner = name.split("/", 1)[1]
            if inner not in ("version", SERIALIZATION_ID):
                w.add(inner, payload)
        w.close()
        return (Path(tmp) / "a.pt").read_bytes()


def mutate_pickle(rng: random.Random, pkl: bytes) -> bytes:
    buf = bytearray(pkl)
    op = rng.randrange(5)
    if op == 0:  # a global renamed
        at = buf.find(b"c", rng.randrange(len(buf)))
        end = buf.find(b"\n", buf.find(b"\n", at + 1) + 1) if at >= 0 else -1
        if at >= 0 and end > 0:
            buf[at + 1 : end + 1] = rng.choice(ODD_GLOBALS)
    elif op == 1:  # an opcode inserted, or one replaced
        pos = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[pos:pos] = bytes([rng.choice(PICKLE_OPCODES)])
        else:
            buf[pos] = rng.choice(PICKLE_OPCODES)
    elif op == 2:  # an integer operand (K, M, J) set to an interesting value
        for _ in range(8):
            pos = rng.randrange(len(buf))
            if buf[pos] in b"KMJ" and pos + 5 <= len(buf):
                width = {ord("K"): 1, ord("M"): 2, ord("J"): 4}[buf[pos]]
                value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
                buf[pos + 1 : pos + 1 + width] = value.to_bytes(width, "little")
                break
    elif op == 3:  # a slice of the stream repeated or dropped
        a = rng.randrange(len(buf))
        b = min(len(buf), a + rng.randrange(1, 64))
        buf[a:b] = buf[a:b] * rng.choice((0, 2, 3))
    else:
        return mutate_bytes(rng, pkl, [], hot=len(pkl))
    return bytes(buf)


def mutate_torch_archive(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    """Half the time the pickle inside, in a well-formed archive; else the archive's own bytes,
    mostly its headers and directory (the tensor data is CRC-checked on loading)."""
    if rng.random() < 0.5:
        records = list(_archive_records(data))
        records[0] = (records[0][0], mutate_pickle(rng, records[0][1]))
        return _rebuilt(records)
    if rng.random() < 0.6:  # the end: central directory and end records
        tail = min(len(data), 4096)
        cut = len(data) - tail
        return data[:cut] + mutate_bytes(rng, data[cut:], [], hot=tail)
    return mutate_bytes(rng, data, others, hot=512)
