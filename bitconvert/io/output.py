"""A new output file written front to back: bytes appended, stored slices of other files copied in,
made durable at close.

Large outputs on a local disk bypass the page cache (``O_DIRECT``): the bytes go from an aligned
staging buffer straight to the device. Written through the cache, every page is first allocated
(with memory full of a multi-GB source, reclaimed from the cache) and filled by a copy in the
kernel, and on a machine whose memory has been through a few large files that costs about a
second of system time per GB written, as much as the conversion's own arithmetic; past the cache it
costs one copy into the staging buffer, and the source a conversion reads stays cached. The price: the
output is not in the cache for whatever reads it next (``verify`` reads it from the disk).

Small outputs, filesystems other than ext4, XFS and btrfs (network mounts, where every direct write
waits for the server; tmpfs, which has no direct I/O), a device that refuses a write's alignment,
and ``BITCONVERT_BUFFERED_WRITES=1`` get ordinary writes, with the disk set writing as the file
grows (:class:`bitconvert.io.writeback.WriteBehind`); stored slices are then copied file to file in
the kernel (``copy_file_range``). Either way the file holds the same bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .writeback import WriteBehind

#: outputs planned at least this large bypass the page cache
DIRECT_MIN = 256 << 20
#: filesystems whose direct writes are local and cheap (as /proc/self/mountinfo names them)
DIRECT_FILESYSTEMS = frozenset({"ext4", "xfs", "btrfs"})
#: where the kernel lists this process's mounts
MOUNTINFO = "/proc/self/mountinfo"
#: offsets, lengths and the buffer address of a direct write are multiples of this (every device's
#: logical block size divides it; at least a page, so direct and cached writes never share one)
ALIGN = max(4096, mmap.PAGESIZE)
#: bytes staged per direct write, and read per step where a slice is copied through memory
STAGE = 8 << 20
#: copy_file_range errors that mean "not between these two files": copy through memory instead
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}


@dataclass(frozen=True)
class FileSlice:
    """Stored bytes a writer keeps as they are (rows of a tensor whose dtype does not change): they
    are copied file to file, never held whole in this process's memory."""

    path: Path
    offset: int
    nbytes: int
    dtype_name: str
    shape: tuple[int, ...]


def _open_source(part: FileSlice) -> int:
    try:
        return os.open(part.path, os.O_RDONLY)
    except OSError as exc:
        raise CheckpointError(part.path, f"cannot read: {exc.strerror or exc}") from None


def _read_into(src: int, part: FileSlice, done: int, view: memoryview) -> int:
    """Read the bytes of ``part`` after the first ``done`` into ``view``; returns how many."""
    try:
        n = os.preadv(src, [view], part.offset + done)
    except OSError as exc:
        raise CheckpointError(part.path, f"cannot read: {exc.strerror or exc}") from None
    if n <= 0:
        raise CheckpointError(part.path, "file ended while reading the tensor")
    return n


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def copy_slice(part: FileSlice, out_fd: int, at: int) -> int:
    """Copy ``part``'s bytes to offset ``at`` of ``out_fd``; returns the count. ``copy_file_range``
    where the kernel can, else through memory a few MB at a time."""
    done = 0
    src = _open_source(part)
    try:
        kernel = hasattr(os, "copy_file_range")
        buf = None
        while done < part.nbytes:
            if kernel:
                try:
                    n = os.copy_file_range(src, out_fd, part.nbytes - done, part.offset + done, at + done)
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel = False
                    continue
                if n <= 0:
                    raise CheckpointError(part.path, "file ended while reading the tensor")
            else:
                buf = buf if buf is not None else memoryview(bytearray(min(STAGE, part.nbytes)))
                n = _read_into(src, part, done, buf[: min(len(buf), part.nbytes - done)])
                _pwrite_all(out_fd, buf[:n], at + done)
            done += n
    finally:
        os.close(src)
    return done


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` lies on, from /proc/self/mountinfo (None where unknown)."""
    try:
        target = os.path.realpath(path)
        with open(MOUNTINFO, encoding="utf-8", errors="replace") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    best, found = -1, None
    for line in mounts:
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # the deepest mount holding it; of equals the last (mounted over)
            best, found = len(point), line.split(" - ", 1)[1].split(" ")[0]
    return found


def _open_direct(path: Path) -> int | None:
    """A second descriptor of the new file ``path`` that bypasses the page cache, or None where the
    platform, the filesystem or the setting says no."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or os.environ.get("BITCONVERT_BUFFERED_WRITES"):
        return None
    if filesystem_type(path) not in DIRECT_FILESYSTEMS:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


class OutputFile:
    """A file created for writing (refused where ``path`` exists), appended to front to back.
    ``size`` is the planned size: at :data:`DIRECT_MIN` or more it is written past the page cache
    where the filesystem allows."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        self.at = 0  # bytes appended so far
        self._behind = WriteBehind(self.fd)
        self._direct = _open_direct(path) if size >= DIRECT_MIN else None
        if self._direct is not None:
            self._stage: mmap.mmap | None = mmap.mmap(-1, STAGE)  # anonymous: page-aligned, as direct writes need
            self._fill = 0  # staged bytes, which belong at file offset self.at - self._fill

    @property
    def direct(self) -> bool:
        """Whether the bytes go past the page cache."""
        return self._direct is not None

    def write(self, data: np.ndarray | bytes | bytearray | memoryview) -> None:
        """Append the bytes of a buffer, or of an array as stored (C order)."""
        src = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        if self._direct is None:
            _pwrite_all(self.fd, memoryview(src), self.at)
            self._behind.wrote(src.size)
            self.at += src.size
            return
        staged = np.frombuffer(self._stage, dtype=np.uint8)
        while src.size:
            n = min(src.size, STAGE - self._fill)
            staged[self._fill : self._fill + n] = src[:n]  # numpy copies without the interpreter lock
            self._fill += n
            self.at += n
            src = src[n:]
            if self._fill == STAGE and not self._flush():
                self.write(src)  # through the page cache from here on
                return

    def copy(self, part: FileSlice) -> None:
        """Append ``part``'s stored bytes, read from its file."""
        if self._direct is None:
            self._behind.wrote(copy_slice(part, self.fd, self.at))
            self.at += part.nbytes
            return
        src = _open_source(part)
        try:
            done = 0
            while done < part.nbytes:
                want = min(STAGE - self._fill, part.nbytes - done)
                with memoryview(self._stage) as stage:
                    n = _read_into(src, part, done, stage[self._fill : self._fill + want])
                self._fill += n
                self.at += n
                done += n
                if self._fill == STAGE and not self._flush():
                    rest = FileSlice(part.path, part.offset + done, part.nbytes - done, part.dtype_name, part.shape)
                    self.copy(rest)
                    return
        finally:
            os.close(src)

    def _flush(self) -> bool:
        """Write the staged bytes: a multiple of :data:`ALIGN` but at the end, which is padded with
        zeros there and cut back by :meth:`close`. Where the device refuses the alignment they go
        through the page cache, as everything after them will: False then."""
        size = self._fill + (-self._fill % ALIGN)
        offset = self.at - self._fill
        with memoryview(self._stage) as stage:
            stage[self._fill : size] = bytes(size - self._fill)
            try:
                _pwrite_all(self._direct, stage[:size], offset)
                return True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _pwrite_all(self.fd, stage[: self._fill], offset)
            finally:
                self._fill = 0
        self._end_direct()
        self._behind = WriteBehind(self.fd, start=self.at)
        return False

    def _end_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
            self._stage = None  # unmapped once no view of it is left

    def close(self) -> None:
        """Write what is staged, cut the file to the bytes appended, make it durable, close it."""
        try:
            if self._direct is not None and self._fill:
                self._flush()
            os.ftruncate(self.fd, self.at)  # the last direct write's padding, if any
            os.fsync(self.fd)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close without finishing (the caller removes the file)."""
        self._end_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
