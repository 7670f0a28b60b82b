"""How a streaming conversion reads and writes: float rows kept as stored are copied file to file (the
same bytes as through memory, through memory where the kernel cannot copy, one clear line where the
source ends early), the disk is set writing as the output grows, a mapped weight hands its pages back
as it is read, and the allocator is set for pieces of a few MB."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint

from bitconvert.convert import convert
from bitconvert.errors import CheckpointError
from bitconvert.formats.hf import common
from bitconvert.io import output, writeback
from bitconvert.io.output import FileSlice, copy_slice
from bitconvert.io.pipeline import tune_allocator
from bitconvert.io.safetensors import SafetensorsFile, map_private, page_release

WIDE = {"hidden": 1024, "intermediate": 1024, "layers": 1, "heads": 8, "kv_heads": 8, "vocab": 4096}


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("copy") / "m", "llama", "master", **WIDE)


def _packed_bytes(src: Path, out: Path) -> bytes:
    convert(src, out, "hf-packed", {})
    return (out / "model.safetensors").read_bytes()


@pytest.fixture(autouse=True)
def _through_the_page_cache(monkeypatch):
    """These tests look at the cached path (file-to-file copies, writeback); the direct one has its own."""
    monkeypatch.setenv("BITCONVERT_BUFFERED_WRITES", "1")


def test_rows_kept_as_stored_are_copied_file_to_file_with_the_bytes_of_the_values(master, tmp_path, monkeypatch):
    through_memory = _packed_bytes(master, tmp_path / "whole")  # 4096 x 1024: one piece, read and written
    copied = []
    real = output.copy_slice
    monkeypatch.setattr(output, "copy_slice", lambda part, fd, at: copied.append(part) or real(part, fd, at))
    monkeypatch.setattr(common, "ROW_BLOCK_VALUES", 1000 * 1024)  # blocks of 1000 rows: copied
    assert _packed_bytes(master, tmp_path / "copied") == through_memory
    names = {(p.shape[0], p.dtype_name) for p in copied}
    assert len(copied) == 2 * 5 and names == {(1000, "BF16"), (96, "BF16")}  # embedding and lm_head


def test_where_the_kernel_cannot_copy_the_bytes_go_through_memory(master, tmp_path, monkeypatch):
    through_memory = _packed_bytes(master, tmp_path / "whole")

    def refuses(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuses)
    monkeypatch.setattr(common, "ROW_BLOCK_VALUES", 1000 * 1024)
    assert _packed_bytes(master, tmp_path / "copied") == through_memory


@pytest.mark.parametrize("kernel", [True, False])
def test_a_source_that_ends_early_is_one_error_naming_it(tmp_path, monkeypatch, kernel):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 16)
    if not kernel:
        monkeypatch.delattr(os, "copy_file_range")
    with open(tmp_path / "out.bin", "wb") as out:
        assert copy_slice(FileSlice(src, 100, 3000, "U8", (3000,)), out.fileno(), 0) == 3000
        with pytest.raises(CheckpointError, match="file ended while reading the tensor") as err:
            copy_slice(FileSlice(src, 4000, 200, "U8", (200,)), out.fileno(), 3000)
    assert str(src) in str(err.value)
    assert (tmp_path / "out.bin").read_bytes()[:3000] == (bytes(range(256)) * 16)[100:3100]


def test_writeback_starts_every_step_over_everything_written(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(writeback, "STEP", 1000)
    monkeypatch.setattr(writeback, "_sync_file_range", lambda: lambda fd, off, n, flags: calls.append((off, n, flags)))
    with open(tmp_path / "out.bin", "wb") as f:
        behind = writeback.WriteBehind(f.fileno(), start=24)
        for n in (600, 600, 300, 2500, 10):
            behind.wrote(n)
    assert calls == [(24, 1200, 2), (1224, 2800, 2)]  # contiguous, not waiting (flag 2: start writing)


def test_the_c_library_takes_the_allocation_thresholds():
    if os.uname().sysname != "Linux":
        pytest.skip("glibc's mallopt")
    assert tune_allocator() is True


def test_a_mapped_weight_hands_its_pages_back_as_it_is_read(master):
    f = SafetensorsFile(master / "model.safetensors")
    t = f.tensors["model.layers.0.mlp.up_proj.weight"]  # 1024 x 1024 bf16: 2 MB
    values = np.frombuffer(map_private(f.path, t.offset, t.nbytes), dtype=np.uint16)
    release = page_release(values)
    assert release is not None and page_release(np.zeros(4, np.uint16)) is None

    def resident_kb() -> int:
        return int(next(line for line in open("/proc/self/status") if line.startswith("RssFile")).split()[1])

    total = int(values.sum(dtype=np.uint64))
    touched = resident_kb()
    for start in range(0, values.size, 1 << 16):
        release(start, start + (1 << 16))
    release(0, 0)  # reading elsewhere: the stretch read so far goes back (else every 4 MB)
    assert touched - resident_kb() >= 1800  # about 2 MB handed back
    assert int(values.sum(dtype=np.uint64)) == total  # and read again from the file, unchanged
