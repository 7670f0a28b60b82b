"""Large outputs on a local disk are written past the page cache (O_DIRECT, from an aligned staging
buffer), with the bytes the cached path writes: pieces of any size, stored slices copied in, the
last partial block cut back; a device that refuses the alignment gets cached writes from there on;
small outputs, other filesystems and ``BITCONVERT_BUFFERED_WRITES`` keep the cached path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES

from bitconvert.convert import convert
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.io import output
from bitconvert.io.output import ALIGN, DIRECT_FILESYSTEMS, FileSlice, OutputFile, filesystem_type


@pytest.fixture
def local(tmp_path, monkeypatch) -> Path:
    """A folder where direct writes are taken, with every output large enough and a stage of three blocks."""
    if filesystem_type(tmp_path) not in DIRECT_FILESYSTEMS or not hasattr(os, "O_DIRECT"):
        pytest.skip(f"{tmp_path} is on {filesystem_type(tmp_path)}: no direct writes there")
    monkeypatch.delenv("BITCONVERT_BUFFERED_WRITES", raising=False)
    monkeypatch.setattr(output, "DIRECT_MIN", 0)
    monkeypatch.setattr(output, "STAGE", 3 * ALIGN)
    return tmp_path


def _pieces(tmp_path: Path) -> tuple[list, bytes]:
    """Writes that cross stage and block boundaries in every way, and the bytes they make."""
    source = tmp_path / "source.bin"
    stored = np.random.default_rng(7).integers(0, 256, size=5 * ALIGN + 999, dtype=np.uint8).tobytes()
    source.write_bytes(stored)
    rows = np.arange(2 * 1250, dtype=np.uint16).reshape(2, 1250)
    pieces = [
        b"header of 37 bytes, not aligned......",
        rows,  # an array, as stored
        FileSlice(source, 13, 4 * ALIGN + 500, "U8", ()),  # an unaligned slice across two stages
        b"",
        bytes(3 * ALIGN - 7),
        FileSlice(source, 0, 10, "U8", ()),
        memoryview(b"tail"),
    ]
    expected = b"".join(
        stored[p.offset : p.offset + p.nbytes] if isinstance(p, FileSlice) else memoryview(p).tobytes() for p in pieces
    )
    return pieces, expected


def _write(path: Path, pieces: list) -> OutputFile:
    out = OutputFile(path, 1 << 40)
    for p in pieces:
        out.copy(p) if isinstance(p, FileSlice) else out.write(p)
    out.close()
    return out


def test_direct_writes_make_the_bytes_of_the_pieces(local):
    pieces, expected = _pieces(local)
    probe = OutputFile(local / "probe.bin", 1 << 40)
    assert probe.direct
    probe.discard()
    _write(local / "direct.bin", pieces)
    assert (local / "direct.bin").read_bytes() == expected  # the padding of the last block cut back


def test_a_device_that_refuses_the_alignment_gets_cached_writes_from_there_on(local, monkeypatch):
    pieces, expected = _pieces(local)
    refused, real = [], os.pwrite
    out = OutputFile(local / "refused.bin", 1 << 40)
    direct_fd = out._direct

    def pwrite(fd, data, offset):
        if fd == direct_fd:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    for p in pieces:
        out.copy(p) if isinstance(p, FileSlice) else out.write(p)
    assert not out.direct
    out.close()
    assert refused == [0]  # tried once, at the first full stage
    assert (local / "refused.bin").read_bytes() == expected


def test_small_outputs_other_filesystems_and_the_setting_keep_the_page_cache(local, monkeypatch, tmp_path):
    monkeypatch.setattr(output, "DIRECT_MIN", 1 << 20)
    small = OutputFile(local / "small.bin", (1 << 20) - 1)
    assert not small.direct
    small.discard()
    monkeypatch.setenv("BITCONVERT_BUFFERED_WRITES", "1")
    asked = OutputFile(local / "asked.bin", 1 << 30)
    assert not asked.direct
    asked.discard()
    monkeypatch.delenv("BITCONVERT_BUFFERED_WRITES")
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        f"40 22 0:50 / {local} rw - nfs4 server:/export rw\n"
        "a line the kernel never writes\n"
    )
    monkeypatch.setattr(output, "MOUNTINFO", str(mounts))
    remote = OutputFile(local / "remote.bin", 1 << 30)  # the folder is an NFS mount now
    assert not remote.direct
    remote.discard()


def test_filesystem_type_is_the_deepest_mount_holding_the_path(tmp_path, monkeypatch):
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:40 / /data rw - xfs /dev/sdb1 rw\n"
        "31 30 0:41 / /data/nfs\\040share rw - nfs4 server:/x rw\n"
        "32 22 0:42 / /dat rw - tmpfs tmpfs rw\n"
        "garbage\n"
    )
    monkeypatch.setattr(output, "MOUNTINFO", str(mounts))
    assert filesystem_type(Path("/data/models/a.gguf")) == "xfs"
    assert filesystem_type(Path("/data/nfs share/a.gguf")) == "nfs4"
    assert filesystem_type(Path("/datadir/a")) == "ext4"  # /dat is not a folder above it
    assert filesystem_type(Path("/etc/hosts")) == "ext4"
    monkeypatch.setattr(output, "MOUNTINFO", str(tmp_path / "missing"))
    assert filesystem_type(Path("/data/a")) is None


@pytest.mark.parametrize("to, options, name", [
    ("hf-packed", {}, "model.safetensors"),
    ("gguf", {"gguf_type": "tq2_0"}, None),
    ("gguf", {"gguf_type": "i2_s"}, None),
])  # fmt: skip
def test_a_conversion_written_past_the_cache_is_the_cached_ones_bytes(local, monkeypatch, to, options, name):
    src = FIXTURES / "bitnet-2b4t-256-master"  # rows of 256: every GGUF type takes them

    opened, real = [], output._open_direct
    monkeypatch.setattr(output, "_open_direct", lambda path: opened.append(real(path)) or opened[-1])

    def made(folder: str) -> bytes:
        (local / folder).mkdir()
        dst = local / folder / ("out" if name else "out.gguf")
        convert(src, dst, to, dict(options))
        if name:
            return (dst / name).read_bytes()
        data = dst.read_bytes()
        return data[GGUFFile(dst).data_start :]  # the header records the command's DST

    direct = made("direct")
    assert opened and all(fd is not None for fd in opened)  # every file written past the cache
    monkeypatch.setenv("BITCONVERT_BUFFERED_WRITES", "1")
    assert direct == made("cached")
    assert opened[-1] is None
