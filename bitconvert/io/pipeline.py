"""Production run ahead of writing: what every streaming writer shares.

A writer plans its output (each item with the bytes it will take), then writes items in plan order
while one worker thread produces the next ones (load, quantize, encode) up to a byte budget, so
arithmetic and file I/O overlap instead of taking turns, in bounded memory.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

from .writeback import libc


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


#: glibc's mallopt parameters: the size from which blocks are mapped on their own, and how much
#: free memory the heap keeps before giving it back
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
#: the pieces production makes are a few MB (rows of a tensor, at most ``ROW_BLOCK_VALUES`` values):
#: below this they come from the heap and are reused; whole large tensors are mapped on their own
MMAP_THRESHOLD = 16 << 20
#: free heap kept for the next pieces instead of being given back and faulted in again
TRIM_THRESHOLD = 64 << 20


def tune_allocator() -> bool:
    """Fix the C library's allocation thresholds for streaming; returns whether it took them.

    glibc moves its mmap threshold up to the largest block freed so far, which makes memory follow
    the order tensors happen to come in; and with blocks of 1 MiB mapped on their own (what we did
    before the pieces were bounded) every piece is faulted in and zeroed by the kernel, then
    unmapped: a third of a conversion's CPU time. With fixed thresholds the pieces are reused from
    the heap, and the heap keeps at most ``TRIM_THRESHOLD`` free: peak memory is the pipeline's
    budget plus that, whatever the model's size. The command line sets this once at start-up; a
    program that calls the library can do the same (or set ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` in the environment).
    """
    lib = libc()  # the process's own: finding it by name would run ldconfig in a subprocess
    mallopt = getattr(lib, "mallopt", None) if lib is not None else None
    if mallopt is None:  # not glibc (musl has no mallopt): its own allocator decides
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
