"""Writing an output through the page cache without waiting for the disk at the end.

Outputs that do not go past the cache (see :mod:`bitconvert.io.output`) are written into it far
faster than a disk takes them; the kernel starts writing only once a tenth of memory is dirty, so
for a model of a few GB almost all of it is still to be written when the file is fsynced, and the
command waits for all of it then. Starting
the writeback of each stretch as soon as it is written (``sync_file_range``, which does not wait)
lets the disk work while the rest is computed, so the final fsync finds little left to do. Such an
output stays in the page cache (reading it next, as ``verify`` does, costs no disk read).
"""

from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

#: bytes written between two starts of writeback
STEP = 32 << 20
#: sync_file_range flag: start writing the range's dirty pages, do not wait
_WRITE = 2


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """The C library already loaded in this process (no search, no subprocess), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@lru_cache(maxsize=1)
def _sync_file_range():
    lib = libc()
    fn = getattr(lib, "sync_file_range", None) if lib is not None else None
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


class WriteBehind:
    """Told how many bytes went to a file descriptor, starts their writeback every :data:`STEP`
    bytes; nothing waits for the disk. Advisory: where the call is missing or fails, the final
    fsync does all the work, as before."""

    def __init__(self, fd: int, start: int = 0) -> None:
        self.fd = fd
        self.done = start  # writeback started up to here
        self.at = start  # bytes written so far

    def wrote(self, nbytes: int) -> None:
        self.at += nbytes
        fn = _sync_file_range()
        if self.at - self.done < STEP or fn is None:
            return
        fn(self.fd, self.done, self.at - self.done, _WRITE)
        self.done = self.at
