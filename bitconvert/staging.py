"""Outputs are built beside their destination and moved into place only when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UsageError


def check_paths(src: Path, dst: Path, force: bool) -> None:
    """Refuse a destination that would overwrite, contain or sit inside the source."""
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise UsageError(f"{dst}: the output may not be the input or lie inside it ({src})")
    if d in s.parents:
        raise UsageError(f"{dst}: the output may not contain the input ({src})")
    if dst.exists() and not force:
        raise UsageError(f"{dst} already exists; pass --force to replace it")
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: output folder does not exist")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def staged_output(dst: Path, *, directory: bool, force: bool) -> Iterator[Path]:
    """Yield a scratch path next to ``dst``; on success it becomes ``dst``, on any failure it vanishes."""
    dst = Path(os.path.abspath(dst))
    tag = uuid.uuid4().hex[:8]
    tmp = dst.parent / f".{dst.name}.bitconvert-{tag}.partial"
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if dst.exists() or dst.is_symlink():
            if not force:
                raise UsageError(f"{dst} already exists; pass --force to replace it")
            old = dst.parent / f".{dst.name}.bitconvert-{tag}.old"
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise
