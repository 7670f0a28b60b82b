"""Compiled loops for the bf16 fast paths: one pass over each weight instead of a dozen numpy passes.

:mod:`bitconvert.ternary.fast.summation` (torch's float32 summation order) and :mod:`bitconvert.ternary.fast.bf16_codes`
(codes from bit patterns) are written in numpy, and that is the definition; the functions here do
the same arithmetic in the same order, compiled by numba (a wheel from the package registry; no
compiler at install time; the machine code is cached on disk after the first run). Where numba is
missing, :func:`kernels` gives None and callers stay on numpy. Set ``BITCONVERT_NO_JIT=1`` to
force that (the tests run both paths).

Every loop adds float32 values per lane in exactly the numpy version's order; numba never
reassociates floating-point additions unless asked (``fastmath`` is off), so results are bit-identical.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable

import numpy as np

#: below this many values numpy is done before numba has loaded its cache (about half a second)
MIN_VALUES = 1 << 20

_lock = threading.Lock()
#: [the numba decorator] once numba is imported and usable, [None] where it is not
_numba: list = []


def _usable_numba():
    """numba's ``njit`` configured as the kernels use it, or None (missing, or ``BITCONVERT_NO_JIT``)."""
    with _lock:
        if not _numba:
            _numba.append(_import_numba())
        return _numba[0]


def _import_numba():
    if os.environ.get("BITCONVERT_NO_JIT"):
        return None
    try:
        from numba import njit

        if os.environ.get("BITCONVERT_NUMBA_WITHOUT_SCIPY") and "scipy.linalg" not in sys.modules:
            _load_numba_without_scipy()
    except ImportError:  # numba missing: numpy does the work
        return None
    return njit(nogil=True, cache=True, error_model="numpy")


def _load_numba_without_scipy() -> None:
    """Load numba's typing and lowering registries while ``import scipy.linalg`` fails.

    Where scipy is installed numba imports its BLAS wrappers as it loads them, to offer
    ``np.dot`` and ``np.linalg`` in compiled code: 0.15 s of Python holding the interpreter lock on
    every run, and OpenBLAS threads, for loops that never use them. Only for a process whose numba
    is ours alone (the command line sets ``BITCONVERT_NUMBA_WITHOUT_SCIPY``): compiled code there
    has no BLAS functions. scipy.linalg itself imports normally afterwards."""
    from numba.core.registry import cpu_target

    sys.modules["scipy.linalg"] = None  # type: ignore[assignment]  # numba catches the ImportError
    try:
        cpu_target.target_context.refresh()
    except Exception:  # noqa: BLE001 (numba loads them itself at the first compilation, scipy and all)
        pass
    finally:
        del sys.modules["scipy.linalg"]


class _Kernel:
    """One compiled loop: the Python definition below, compiled (or loaded from numba's on-disk
    cache) for the argument types its callers pass, the first time it is asked for."""

    def __init__(self, name: str, warm_up: Callable[[Callable], None]) -> None:
        self.name, self.warm_up = name, warm_up
        self.lock = threading.Lock()
        self.done = False
        self.compiled: Callable | None = None

    def get(self) -> Callable | None:
        """The compiled loop; None where it cannot be compiled, and while another thread compiles
        it: the caller runs the numpy definition meanwhile (the same results), so the first
        conversion after installing never waits for the compiler."""
        if self.done:
            return self.compiled
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if not self.done:
                self.compiled = self._compile()
                self.done = True
            return self.compiled
        finally:
            self.lock.release()

    def _compile(self) -> Callable | None:
        jit = _usable_numba()
        if jit is None:
            return None
        try:
            compiled = jit(globals()[f"_{self.name}"])
            self.warm_up(compiled)
        except Exception:  # no cache location, an LLVM that refuses: numpy gives the same results
            return None
        return compiled


class Kernels:
    """The compiled loops by name (``block_abs_sums``, ``pack_rows``, ``codes_flat``,
    ``pack_code_planes``), each compiled on first use; a loop that cannot be compiled is None and
    its caller stays on numpy. A job compiles only the loops it runs (a TQ2_0 conversion never
    waits for the hf-packed packer), and :func:`prepare` compiles them ahead, beside other work."""

    def __getattr__(self, name: str) -> Callable | None:
        if name not in _KERNELS:
            raise AttributeError(name)
        return _KERNELS[name].get()


_kernels = Kernels()


def kernels(values: int | None = None) -> Kernels | None:
    """The compiled loops (see :class:`Kernels`), or None where numba is missing,
    ``BITCONVERT_NO_JIT`` is set, or ``values`` (the size of the job) is too small to pay for
    loading them. numba is imported on the first call that uses it, so commands that never
    quantize a large weight do not pay for it."""
    if values is not None and values < MIN_VALUES:
        return None
    return _kernels if _usable_numba() is not None else None


def prepare(*names: str) -> None:
    """Compile (or load from the cache) the loops ``names`` in a background thread, so that the
    first weight that needs them does not wait for the compiler: a conversion calls this as it
    starts, and reads headers and copies its first tensors meanwhile. numba's compiler releases
    the GIL while LLVM works; a weight that asks for a loop before it is ready is done by numpy."""
    # The process lets it finish before exiting (not a daemon; joined at exit, as the command line
    # leaves through os._exit after the exit handlers), so that the cache is written even by a job
    # shorter than the compilation and the next run loads it.
    worker = threading.Thread(target=lambda: [_KERNELS[n].get() for n in names], name="bitconvert-jit")
    worker.start()
    atexit.register(worker.join)


def _warm_block_abs_sums(k: Callable) -> None:
    k(np.zeros(64, dtype=np.uint16), 0, 2, 2, 16, np.empty((2, 16), dtype=np.float32), *abs_scratch(16))


def abs_scratch(cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scratch arrays ``block_abs_sums`` works in for rows of ``cols`` values: ``words`` and
    ``floats`` (one buffer of 64 rows) and ``acc``; one set per thread."""
    words = np.empty(64 * cols, dtype=np.uint32)
    return words, words.view(np.float32), np.empty(cols, dtype=np.float32)


def _warm_pack_rows(k: Callable) -> None:
    k(np.zeros((4, 2, 8), dtype=np.uint16), 1, np.empty((2, 8), dtype=np.uint8), 0, 2, 0)


def _warm_codes_flat(k: Callable) -> None:
    k(np.zeros(64, dtype=np.uint16), 1, np.empty(64, dtype=np.uint8), 0, 64)


def _warm_pack_code_planes(k: Callable) -> None:
    codes = np.zeros((2, 256), dtype=np.uint8)
    k(codes, 0, 2, 4, 6, np.empty((2, 1, 66), dtype=np.uint8)[:, :, :64].reshape(2, 1, 2, 32))  # GGUF TQ2_0
    k(codes, 6, 4, 2, 0, np.empty((2, 64), dtype=np.uint8).reshape(2, 2, 1, 32))  # I2_S


def _block_abs_sums(bits, first, blocks, step, cols, out, words, floats, acc):
    """out[k, c] = the sequential float32 sum over rows k*step .. k*step+step-1 of |x[row, c]|, the
    rows being ``cols`` bf16 values each from flat index ``first``: the first level of torch's
    cascade (:func:`bitconvert.ternary.fast.summation._range_sum` does the rest, on these sums).

    ``words``/``floats`` are one scratch buffer of whole rows seen as uint32 and float32 (numba has
    no scalar bit cast: a batch of rows is widened there in one loop, then added row by row), and
    ``acc`` holds ``cols`` floats. The caller allocates them, and elements are assigned one by one,
    because every numpy function used in here (``empty``, ``view``, ``min``, slice assignment) is a
    function numba compiles too: a user's first conversion would wait for them."""
    batch = words.size // cols
    for k in range(blocks):
        for c in range(cols):
            acc[c] = 0
        start = first + k * step * cols
        for r0 in range(0, step, batch):
            n = step - r0
            if n > batch:  # noqa: PLR1730 (numba compiles min() as one more function)
                n = batch
            n *= cols
            src = bits[start + r0 * cols : start + r0 * cols + n]  # a slice: plain loops LLVM vectorizes
            for i in range(n):
                words[i] = np.uint32(src[i] & 0x7FFF) << np.uint32(16)
            for r in range(n // cols):
                row = floats[r * cols : (r + 1) * cols]
                for c in range(cols):
                    acc[c] += row[c]
        for c in range(cols):
            out[k, c] = acc[c]


def _pack_rows(planes, threshold, out, r0, r1, first):
    """Packed row-block bytes for rows r0..r1 of the packed weight into ``out``, whose row 0 is row
    ``first``: sum over planes i of (code + 1) << 2i."""
    hi = np.uint16(0x8000 + threshold)
    t = np.uint16(threshold)
    neg = np.uint16(0x7FFF)
    for r in range(r0, r1):
        o = out[r - first]
        p0, p1, p2, p3 = planes[0, r], planes[1, r], planes[2, r], planes[3, r]
        for c in range(o.size):
            byte = np.uint8(0x55)  # the +1 of every plane
            byte += np.uint8(p0[c] > t) - np.uint8(p0[c] > neg) - np.uint8(p0[c] > hi)
            byte += (np.uint8(p1[c] > t) - np.uint8(p1[c] > neg) - np.uint8(p1[c] > hi)) << np.uint8(2)
            byte += (np.uint8(p2[c] > t) - np.uint8(p2[c] > neg) - np.uint8(p2[c] > hi)) << np.uint8(4)
            byte += (np.uint8(p3[c] > t) - np.uint8(p3[c] > neg) - np.uint8(p3[c] > hi)) << np.uint8(6)
            o[c] = byte


def _pack_code_planes(codes, s0, s1, s2, s3, out):
    """Code bytes ``[R, C]`` (mod 256) packed four to a byte into ``out`` ``[R, G, H, Q]``: each
    block of ``4 Q`` values of a row is four planes of Q values, plane i's code + 1 at bit ``s_i``
    of the block's Q bytes; the row's blocks fill ``out[r]`` in (G, H) order."""
    rows, groups, halves, q = out.shape
    for r in range(rows):
        crow = codes[r]
        for g in range(groups):
            for h in range(halves):
                base = (g * halves + h) * 4 * q
                p0, p1, p2, p3 = crow[base : base + q], crow[base + q : base + 2 * q], crow[base + 2 * q : base + 3 * q], crow[base + 3 * q : base + 4 * q]
                o = out[r, g, h]
                for k in range(q):
                    o[k] = (
                        (((p0[k] + 1) & 3) << s0)
                        | (((p1[k] + 1) & 3) << s1)
                        | (((p2[k] + 1) & 3) << s2)
                        | (((p3[k] + 1) & 3) << s3)
                    )


def _codes_flat(bits, threshold, out, start, stop):
    """Codes (uint8 mod 256, 255 is -1) of flat bf16 patterns start..stop into ``out``."""
    hi = np.uint16(0x8000 + threshold)
    t = np.uint16(threshold)
    neg = np.uint16(0x7FFF)
    src, dst = bits[start:stop], out[start:stop]
    for i in range(src.size):
        v = src[i]
        dst[i] = np.uint8(v > t) - np.uint8(v > neg) - np.uint8(v > hi)


#: every compiled loop and how it is warmed up (compiled for its callers' argument types)
_KERNELS = {
    "block_abs_sums": _Kernel("block_abs_sums", _warm_block_abs_sums),
    "pack_rows": _Kernel("pack_rows", _warm_pack_rows),
    "codes_flat": _Kernel("codes_flat", _warm_codes_flat),
    "pack_code_planes": _Kernel("pack_code_planes", _warm_pack_code_planes),
}
