"""Production run ahead of writing: what every streaming writer shares.

A writer plans its output (each item with the bytes it will take), then writes items in plan order
while one worker thread produces the next ones (load, quantize, encode) up to a byte budget, so
arithmetic and file I/O overlap instead of taking turns, in bounded memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Protocol, Sequence, TypeVar


class Planned(Protocol):
    """A planned output item: all the pipeline needs to know of it is its size."""

    @property
    def nbytes(self) -> int: ...


P = TypeVar("P", bound=Planned)
T = TypeVar("T")


#: produced tensors may queue up to this many bytes ahead of the writer (plus the one being written)
AHEAD_BYTES = 32 << 20


def ahead_budget(plan: Sequence[Planned]) -> int:
    """How far production may run ahead: enough to overlap the largest write, never more than
    :data:`AHEAD_BYTES`, and a small share of a small model (so memory stays a few tensors there too)."""
    total = sum(t.nbytes for t in plan)
    largest = max((t.nbytes for t in plan), default=0)
    return min(AHEAD_BYTES, max(2 * largest, total // 8))


def produced_ahead(plan: Sequence[P], produce: Callable[[P], T], ahead_bytes: int = AHEAD_BYTES) -> Iterator[T]:
    """Yield ``produce(t)`` for each planned tensor in order, computing ahead while the caller writes.

    Reading and quantizing overlap writing (torch, numpy and file I/O release the GIL). While a
    big tensor is written (the embedding) production runs on, up to ``ahead_bytes`` of output
    queued (at least one tensor), so the writer's I/O and the arithmetic overlap rather than take
    turns. ``produce`` runs on one worker thread, in plan order, so writers may keep state between
    calls.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconvert-produce") as pool:
        queue: deque = deque()
        queued = 0
        submitted = 0
        try:
            for _ in range(len(plan)):
                while submitted < len(plan) and (not queue or queued + plan[submitted].nbytes <= ahead_bytes):
                    queue.append((pool.submit(produce, plan[submitted]), plan[submitted].nbytes))
                    queued += plan[submitted].nbytes
                    submitted += 1
                future, nbytes = queue.popleft()
                queued -= nbytes
                tensor = future.result()
                yield tensor
                del tensor, future
        finally:
            for future, _ in queue:
                future.cancel()


#: glibc's mallopt parameter for the size from which blocks are mapped on their own
_M_MMAP_THRESHOLD = -3


def return_freed_blocks() -> bool:
    """Have blocks of 1 MiB and more (tensor pieces, row blocks) mapped on their own, so that each
    goes back to the system when freed; returns whether the C library took the setting.

    glibc raises that threshold to the size of the largest block freed so far (up to 32 MiB):
    from then on every piece of that size comes from the heap, and heap memory freed by one thread
    and asked for by another stays resident, so a streaming conversion's peak memory would grow with
    the number of pieces it makes (a third more at 2B) and the kernel would spend as long again
    trimming and re-faulting heap pages. The command line sets this once at start-up; a program
    that calls the library can do the same (or set ``MALLOC_MMAP_THRESHOLD_=1048576``).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): its own allocator decides
        return False
