"""Outputs are built beside their destination and moved into place only when complete.

The scratch path's name records its owner: ``.DST.bitconvert-PID-START-TAG.partial``, with the
owner's process id and start time (clock ticks since boot, from ``/proc``; ``0`` where unknown).
A run that was killed outright (SIGKILL, power loss) cannot clean up after itself, so the next run
for the same DST removes scratch paths whose owner is gone. A path whose owner is alive (another
run writing the same DST) is never touched; an owner whose start time is unknown counts as alive
while its pid exists.

Moving into place: without ``--force`` the final step is a rename that refuses to replace anything
(``renameat2(RENAME_NOREPLACE)``, else a hard link for a file), so a DST that appears while the
output is written is never overwritten. With ``--force`` the old DST is first moved aside under the
same owner-stamped name (``.old``) and put back if the final rename fails. The directory is fsynced
after the rename so the new name survives a crash.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UsageError
from .files import kind_of


def check_paths(src: Path, dst: Path, force: bool, *, directory: bool = True) -> None:
    """Refuse a destination that would overwrite, contain or sit inside the source, or that
    :func:`check_output` refuses."""
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise UsageError(f"{dst}: the output may not be the input or lie inside it ({src})")
    if d in s.parents:
        raise UsageError(f"{dst}: the output may not contain the input ({src})")
    check_output(dst, directory=directory, force=force)


def check_output(path: Path, *, directory: bool = False, force: bool = False, what: str = "output") -> None:
    """The one rule for every path bitconvert writes (outputs, reports, manifests, logits): a new
    path, or, with ``force``, an existing regular file (a directory, for a directory output) that is
    replaced. A device, FIFO or socket is never replaced (as root, replacing ``/dev/null`` would break
    the machine), nor a directory by a file. Refused as a UsageError before any work."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # through a link: what it names is what a writer would hit
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UsageError(f"{path}: cannot use as the {what}: {exc.strerror or exc}") from None
    if mode is not None or path.is_symlink():
        replaceable = stat.S_ISREG(mode) or (directory and stat.S_ISDIR(mode)) if mode is not None else True
        if not replaceable:
            raise UsageError(f"{path}: the {what} path is {kind_of(mode)}; give a new path or a regular file")
        if not force:
            raise UsageError(f"{path} already exists; pass --force to replace it")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: output folder does not exist")


# --- owners -----------------------------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if there is no such process.

    0 where the system does not say (no ``/proc``): then the pid alone decides.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None if Path("/proc/self/stat").exists() else (0 if _pid_exists(pid) else None)
    except OSError:
        return 0 if _pid_exists(pid) else None
    # the command name (field 2) is in parentheses and may contain spaces: count fields after it
    return int(stat.rpartition(")")[2].split()[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tag() -> str:
    """``PID-START`` of this process, as written into scratch names."""
    return f"{os.getpid()}-{process_start(os.getpid()) or 0}"


def _owner_alive(pid: int, start: int) -> bool:
    now = process_start(pid)
    return now is not None and (start == 0 or now == 0 or now == start)


def _scratch_pattern(dst: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(dst.name)}\.bitconvert-(\d+)-(\d+)-[0-9a-f]+\.(partial|old)")


def remove_stale(dst: Path) -> list[Path]:
    """Remove the scratch paths of ``dst`` whose owner is gone; returns what was removed.

    A ``.old`` left by a ``--force`` run killed between its two renames is the original DST: it is
    put back when DST is missing, removed otherwise.
    """
    dst = Path(os.path.abspath(dst))
    pattern = _scratch_pattern(dst)
    removed = []
    try:
        entries = sorted(os.listdir(dst.parent))
    except OSError:
        return removed
    for name in entries:
        m = pattern.fullmatch(name)
        if m is None or _owner_alive(int(m[1]), int(m[2])):
            continue
        path = dst.parent / name
        if m[3] == "old" and not (dst.exists() or dst.is_symlink()):
            os.rename(path, dst)
        else:
            _remove(path)
        removed.append(path)
    return removed


# --- moving into place ------------------------------------------------------------------------

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _renameat2():
    """libc's renameat2 (Linux), looked up once; None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; FileExistsError if ``dst`` exists, decided atomically where possible."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: this file system has no such flag
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    if not src.is_dir():
        try:
            os.link(src, dst)  # fails if dst exists, atomically
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        else:
            os.unlink(src)
            return
    # last resort (no renameat2, no hard links): check, then rename
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable; a no-op where directories cannot be opened or synced."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _move_into_place(tmp: Path, dst: Path, old: Path, force: bool) -> None:
    if not force:
        try:
            rename_noreplace(tmp, dst)
        except FileExistsError:
            raise UsageError(f"{dst} already exists; pass --force to replace it") from None
        return
    if not (dst.exists() or dst.is_symlink()):
        os.replace(tmp, dst)
        return
    os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.replace(old, dst)  # the original goes back where it was
        raise
    _remove(old)


@contextmanager
def staged_output(dst: Path, *, directory: bool, force: bool) -> Iterator[Path]:
    """Yield a scratch path next to ``dst``; on success it becomes ``dst``, on any failure it vanishes."""
    dst = Path(os.path.abspath(dst))
    remove_stale(dst)
    stem = f".{dst.name}.bitconvert-{owner_tag()}-{uuid.uuid4().hex[:8]}"
    tmp, old = dst.parent / f"{stem}.partial", dst.parent / f"{stem}.old"
    try:  # created inside: a signal right after the folder appears still removes it
        if directory:
            tmp.mkdir()
        yield tmp
        _move_into_place(tmp, dst, old, force)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(dst)  # a failed write() names no file: it was this output's
        raise
    fsync_dir(dst.parent)


def write_atomically(path: Path, data: str | bytes, what: str = "report") -> None:
    """Write a small output file (a report, a manifest) whole or not at all: staged beside ``path``
    and renamed over it, so a reader never sees half of it and an interrupted run leaves the old one.
    Only a new path or a regular file is replaced (:func:`check_output`)."""
    path = Path(path)
    check_output(path, force=True, what=what)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with staged_output(path, directory=False, force=True) as tmp:
        with open(tmp, "xb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
