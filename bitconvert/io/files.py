"""What kind of file a path is, and reading small files that must be regular files.

A path given as a report, manifest or config may name a FIFO (reading it would wait forever), a
device or a directory; these are refused in one line before anything is read or written.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import CheckpointError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """``"a directory"``, ``"a FIFO"`` ... for a stat mode; ``"a regular file"`` for one."""
    return next((name for test, name in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "not a file")


def read_regular(path: str | Path, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file (a link to one is followed)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except OSError as exc:
        raise CheckpointError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(path, f"{what} is {kind_of(mode)}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
