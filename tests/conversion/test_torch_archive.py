"""bitconvert's torch.save writer (zip + pickle, no torch) against torch.save itself, byte for byte,
and the reader (no unpickling) on torch's own files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bitconvert.io.torch_archive import ALIGNMENT, FORMAT_VERSION, TorchArchive, TorchArchiveWriter, unordered_set_order
from bitconvert.io.torch_pickle import SavedTensor, dict_pickle, read_dict_pickle

torch = pytest.importorskip("torch")

NUMPY = {"BF16": np.uint16, "I8": np.int8, "U8": np.uint8, "F16": np.float16, "F32": np.float32, "I64": np.int64}
TORCH = {"BF16": torch.bfloat16, "I8": torch.int8, "U8": torch.uint8, "F16": torch.float16, "F32": torch.float32,
         "I64": torch.int64}  # fmt: skip


def _items(n: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        dtype = rng.choice(sorted(NUMPY))
        shape = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(0, 4))))
        values = rng.integers(0, 100, size=shape).astype(NUMPY[dtype])
        out.append((f"layers.{i}.w{int(rng.integers(1000))}.weight", dtype, values))
    return out


def write_like_torch(path: Path, items: list[tuple[str, str, np.ndarray]]) -> None:
    saved = [SavedTensor(key, dtype, v.shape, str(i)) for i, (key, dtype, v) in enumerate(items)]
    w = TorchArchiveWriter(path, path.stem)
    w.add("data.pkl", dict_pickle(saved))
    w.add(".format_version", FORMAT_VERSION)
    w.add(".storage_alignment", str(ALIGNMENT).encode())
    w.add("byteorder", b"little")
    for i, (_, _, v) in enumerate(items):
        w.add(f"data/{i}", v.reshape(-1).view(np.uint8))
    w.close()


def save_with_torch(path: Path, items: list[tuple[str, str, np.ndarray]]) -> None:
    torch.save({k: torch.from_numpy(v.copy()).view(TORCH[d]) if d == "BF16" else torch.from_numpy(v.copy())
                for k, d, v in items}, path)  # fmt: skip


# bucket growth of the record-name set (13, 29, 59, 127, 257, 541, 1109) and pickle batches (1000)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 8, 9, 24, 25, 54, 55, 122, 123, 252, 253, 363, 536, 537, 999, 1000, 1001, 1105])
def test_bytes_equal_torch_save(tmp_path, n):
    items = _items(n, n)
    (tmp_path / "ours").mkdir()
    (tmp_path / "torch").mkdir()
    ours, theirs = tmp_path / "ours" / "model.pt", tmp_path / "torch" / "model.pt"
    write_like_torch(ours, items)
    save_with_torch(theirs, items)
    assert ours.read_bytes() == theirs.read_bytes()
    archive = TorchArchive(theirs)
    tensors = read_dict_pickle(archive.read("data.pkl").tobytes(), theirs)
    assert [(t.key, t.dtype_name, t.shape) for t in tensors] == [(k, d, v.shape) for k, d, v in items]
    for t, (_, _, v) in zip(tensors, items):
        assert archive.read(f"data/{t.storage}").tobytes() == v.tobytes()


def test_data_starting_like_a_data_descriptor_counts_in_the_id(tmp_path):
    """torch's write hook takes any write of 8+ bytes that starts with PK\\x07\\x08 for a data
    descriptor and hashes its next 4 bytes as a CRC: tensor data starting so changes the id."""
    items = [("a", "U8", np.frombuffer(b"PK\x07\x08\x11\x22\x33\x44rest", dtype=np.uint8).copy()),
             ("b", "U8", np.frombuffer(b"PK\x07\x08abc", dtype=np.uint8).copy())]  # fmt: skip
    (tmp_path / "ours").mkdir()
    (tmp_path / "torch").mkdir()
    write_like_torch(tmp_path / "ours" / "m.pt", items)
    save_with_torch(tmp_path / "torch" / "m.pt", items)
    assert (tmp_path / "ours" / "m.pt").read_bytes() == (tmp_path / "torch" / "m.pt").read_bytes()
    from bitconvert.io.torch_archive import serialization_id

    archive = TorchArchive(tmp_path / "torch" / "m.pt")
    names = [n for n in archive.records if n != ".data/serialization_id"]
    plain = serialization_id(names, [archive.records[n].crc for n in names])
    assert plain != archive.read(".data/serialization_id").tobytes()  # without the extra CRC: another id


def test_the_name_hash_follows_the_hash_sets_order_not_the_writing_order(tmp_path):
    """Hashed in writing order the names give another serialization id than torch's."""
    from bitconvert.io.torch_archive import hash_combine, std_string_hash

    items = _items(20, 1)
    save_with_torch(tmp_path / "model.pt", items)
    written = ["data.pkl", ".format_version", ".storage_alignment", "byteorder"]
    written += [f"data/{i}" for i in range(20)] + ["version"]
    assert sorted(unordered_set_order(written)) == sorted(written) and unordered_set_order(written) != written
    stored = TorchArchive(tmp_path / "model.pt").read(".data/serialization_id").tobytes()[:20]

    def name_hash(names):
        h = 0
        for name in names:
            h = hash_combine(h, std_string_hash(name.encode()))
        return f"{h:020d}".encode()

    assert name_hash(unordered_set_order(written)) == stored != name_hash(written)


@pytest.mark.skipif(not os.environ.get("BITCONVERT_BIG_TESTS"), reason="writes 4 x 4.4 GB; set BITCONVERT_BIG_TESTS=1")
@pytest.mark.parametrize("sizes", [(8, 2_200_000_000, 2_200_000_000, 6, 5), (8, 2**32 + 100, 5)])
def test_zip64_archives_equal_torch_save(tmp_path, sizes):
    """Offsets past 4 GiB, and a record of 4 GiB: zip64 extra fields and 64-bit data descriptors."""
    items = [(f"t{i}", "U8", np.zeros(n, dtype=np.uint8)) for i, n in enumerate(sizes)]
    (tmp_path / "ours").mkdir()
    (tmp_path / "torch").mkdir()
    ours, theirs = tmp_path / "ours" / "big.pt", tmp_path / "torch" / "big.pt"
    write_like_torch(ours, items)
    save_with_torch(theirs, items)
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        while chunk := a.read(1 << 26):
            assert chunk == b.read(1 << 26)
        assert b.read(1) == b""
    archive = TorchArchive(theirs)
    assert [archive.record(f"data/{i}").size for i in range(len(sizes))] == list(sizes)
