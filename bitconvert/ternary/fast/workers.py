"""Split one tensor's arithmetic over the machine's cores.

numpy releases the GIL inside its loops, so a few Python threads give real parallelism for the
bf16 fast paths (:mod:`bitconvert.ternary.fast.summation`, :mod:`bitconvert.ternary.fast.bf16_codes`). One pool serves the
whole process; work is only ever submitted from outside it, so a task never waits on the pool.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not every platform has affinity masks
        return max(1, os.cpu_count() or 1)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="bitconvert-math")
        return _pool


def split_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, the items run side by side when there is more than one core.

    The first item runs on the calling thread, so a caller never idles while the pool works.
    """
    if len(items) < 2 or cores() < 2 or threading.current_thread().name.startswith("bitconvert-math"):
        return [fn(x) for x in items]
    pool = _shared_pool()
    rest = [pool.submit(fn, x) for x in items[1:]]
    try:
        first = fn(items[0])
    finally:
        results = [f.result() for f in rest]
    return [first, *results]


def spans(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``total`` into at most ``parts`` nearly equal pieces,
    every cut at a multiple of ``align``."""
    units = -(-total // align) if total else 0
    parts = max(1, min(parts, units))
    cuts = [min(total, (units * i // parts) * align) for i in range(parts + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
