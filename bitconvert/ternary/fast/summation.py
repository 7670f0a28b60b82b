"""torch's CPU float32 sum of |x| over a bf16 tensor, reproduced chunk by chunk.

transformers' absmean recipe takes ``mean|W|`` with torch's own reduction over the whole float32
copy of the weight, and a float32 sum depends on its order: any other order can move the last bit
of the mean, and with it the scale. This module follows torch's order exactly while reading the
bf16 values in cache-sized chunks, so no full-size float32 copy is ever made:

- ``at::parallel_reduce`` splits the flat tensor into one contiguous range per OpenMP thread
  (``ceil(n / threads)`` elements each, no split below 32768 elements); the per-thread results
  are then summed in thread order, through the same inner routine.
- Inside a range (``vectorized_inner_sum`` of SumKernel.cpp) the values are read as SIMD vectors
  of ``lanes`` floats; four interleaved vector accumulators each run a four-level cascade (blocks
  of ``2**p`` rows, ``p = max(4, ceil(log2 rows) // 4)``); leftover vectors go to the first
  accumulator, the four are added, leftover scalars are summed and the lanes added to them in
  order.

The SIMD width is the build's, not the CPU's (torch registers its sum kernel without AVX-512), so
:func:`calibrated_lanes` finds it by comparing against torch once per thread count; where no width
reproduces torch, callers must fall back to torch itself. Pure numpy, so it releases the GIL; where
numba is installed the same loops run compiled (:mod:`bitconvert.ternary.fast.jit`), in the same order.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import jit
from .workers import split_map

GRAIN = 32768  # at::internal::GRAIN_SIZE
LEVELS = 4
ILP = 4
#: rows of ``ILP * lanes`` floats converted per step (about 512 KB of float32 at 8 lanes)
CHUNK_ROWS = 4096
LANE_CANDIDATES = (8, 16, 4, 32)

#: ``release(start, stop)``: called once flat values ``start:stop`` have been read (a mapped weight
#: hands their pages back there; see :func:`bitconvert.io.safetensors.page_release`)
Release = Callable[[int, int], None]
#: values per call of the compiled first level (2 MB of bf16): its sums are folded a batch at a time
COMPILED_BATCH = 1 << 20

_calibration: dict[int, int | None] = {}
_lock = threading.Lock()


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else (x - 1).bit_length()


class _AbsReader:
    """|x| of bf16 bit patterns as float32, into reused buffers: the bits, sign cleared, become
    the high half of each float32 (two contiguous passes; faster than a strided store)."""

    def __init__(self, bits: np.ndarray, capacity: int, release: Release | None = None) -> None:
        self.bits = bits
        self.magnitudes = np.empty(capacity, dtype=np.uint16)
        self.words = np.empty(capacity, dtype=np.uint32)
        self.release = release

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        mag, words = self.magnitudes[:n], self.words[:n]
        np.bitwise_and(self.bits[start:stop], 0x7FFF, out=mag)
        if self.release is not None:
            self.release(start, stop)
        np.left_shift(mag, 16, out=words, dtype=np.uint32)
        return words.view(np.float32)


class _FloatAbsReader:
    """|x| of float16/float32/float64 values as float32 (torch's ``.float()`` then ``abs``), into a reused buffer."""

    def __init__(self, values: np.ndarray, capacity: int, release: Release | None = None) -> None:
        self.values = values
        self.out = np.empty(capacity, dtype=np.float32)
        self.release = release

    def read(self, start: int, stop: int) -> np.ndarray:
        out = self.out[: stop - start]
        with np.errstate(over="ignore"):  # float64 beyond float32's range is inf, as in torch
            out[:] = self.values[start:stop]
        if self.release is not None:
            self.release(start, stop)
        return np.abs(out, out=out)


def _seq(a: np.ndarray, axis: int) -> np.ndarray:
    # numpy adds along a non-innermost axis one slice at a time, in order: a sequential sum
    return np.add.reduce(a, axis=axis, dtype=np.float32)


def _level_step(span: tuple[int, int], lanes: int) -> int:
    """Rows per cascade level for a range: ``2**max(4, ceil(log2 rows) // 4)``."""
    rows = (span[1] - span[0]) // lanes // ILP
    return 1 << max(4, _ceil_log2(rows) // LEVELS)


def _range_sum(reader: _AbsReader | _Values, begin: int, end: int, lanes: int, block_sums=None) -> np.float32:
    """torch's sum over one thread's range. ``block_sums(first, blocks, step, cols)``, where given,
    computes the first level of the cascade (the compiled loop, for bf16); numpy does it otherwise."""
    n = end - begin
    vec_count = n // lanes
    rows = vec_count // ILP
    cols = ILP * lanes
    step = _level_step((begin, end), lanes)
    group = step * step  # rows folded into one level-2 partial
    full = rows // group * group
    blocks = (rows - full) // step  # whole blocks of ``step`` rows after the last whole group
    if block_sums is not None:
        b2, tail = block_sums(begin, full // step, blocks, step, cols)
        acc1 = _seq(tail, 0)
    else:
        per = max(group, CHUNK_ROWS // group * group)
        level2 = []
        for r0 in range(0, full, per):
            r1 = min(r0 + per, full)
            x = reader.read(begin + r0 * cols, begin + r1 * cols).reshape(-1, step, cols)
            level2.append(_seq(_seq(x, 1).reshape(-1, step, cols), 1))
        b2 = np.concatenate(level2) if level2 else np.zeros((0, cols), np.float32)
        rest = reader.read(begin + full * cols, begin + (full + blocks * step) * cols)
        acc1 = _seq(_seq(rest.reshape(blocks, step, cols), 1), 0)
    acc0 = _seq(reader.read(begin + (full + blocks * step) * cols, begin + rows * cols).reshape(-1, cols), 0)
    n3 = b2.shape[0] // step
    acc3 = _seq(_seq(b2[: n3 * step].reshape(n3, step, cols), 1), 0)
    acc2 = _seq(b2[n3 * step :], 0)
    partial = (((acc0 + acc1) + acc2) + acc3).reshape(ILP, lanes)
    for v in reader.read(begin + rows * cols, begin + vec_count * lanes).reshape(-1, lanes).copy():
        partial[0] += v
    vec = ((partial[0] + partial[1]) + partial[2]) + partial[3]
    total = np.float32(0)
    with np.errstate(over="ignore"):  # a sum past float32's range is inf, as in torch
        for v in reader.read(begin + vec_count * lanes, end).copy():
            total = np.float32(total + v)
        for v in vec:
            total = np.float32(total + v)
    return total


def _compiled_block_sums(kernel, bits: np.ndarray, release: Release | None = None):
    """``block_sums`` for :func:`_range_sum` from the compiled loop over the bf16 words ``bits``:
    ``block_sums(first, grouped, extra, step, cols)`` gives the level-2 sums of the first ``grouped``
    level-1 blocks (whole groups of ``step``) and the level-1 sums of the ``extra`` blocks after them.
    Blocks and groups are independent sums, so they are made a batch of whole groups per call and
    folded at once: memory stays a batch, whatever the weight's size, with the same results."""

    def block_sums(first: int, grouped: int, extra: int, step: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        size = step * cols
        per = max(step, COMPILED_BATCH // size // step * step)  # blocks per call: whole groups
        out = np.empty((min(per, max(grouped, extra)), cols), dtype=np.float32)
        scratch = jit.abs_scratch(cols)  # this call's own: the threads' ranges run side by side
        level2 = []
        for k in range(0, grouped, per):
            n = min(per, grouped - k)
            kernel(bits, first + k * size, n, step, cols, out[:n], *scratch)
            if release is not None:
                release(first + k * size, first + (k + n) * size)
            level2.append(_seq(out[:n].reshape(-1, step, cols), 1))
        tail = out[:extra]
        kernel(bits, first + grouped * size, extra, step, cols, tail, *scratch)
        if release is not None:
            release(first + grouped * size, first + (grouped + extra) * size)
        return (np.concatenate(level2) if level2 else np.zeros((0, cols), np.float32)), tail

    return block_sums


class _Values:
    """Float32 values read as they are (the per-thread partials)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.values[start:stop]


def abs_sum_bf16(bits: np.ndarray, threads: int, lanes: int) -> np.float32:
    """Sum of |x| over bf16 bit patterns (flat uint16), bit-identical to torch's float32 sum."""
    return abs_sum(bits, "BF16", threads, lanes)


def abs_sum(values: np.ndarray, dtype_name: str, threads: int, lanes: int, release: Release | None = None) -> np.float32:
    """torch's ``w.float().abs().sum()`` of flat stored values (bf16 as its uint16 words), bit for bit.
    ``release`` is told of each stretch of values once it has been read."""
    n = values.size
    compiled = _compiled_for(n, lanes) if dtype_name == "BF16" else None

    block_sums = _compiled_block_sums(compiled, values, release) if compiled is not None else None

    def range_sum(span: tuple[int, int]) -> np.float32:
        capacity = min(span[1] - span[0], CHUNK_ROWS * ILP * lanes) + ILP * lanes
        reader = (_AbsReader if dtype_name == "BF16" else _FloatAbsReader)(values, capacity, release)
        return _range_sum(reader, span[0], span[1], lanes, block_sums)

    if n < GRAIN or threads == 1:
        return np.float32(np.float32(0) + range_sum((0, n)))
    used = min(threads, -(-n // GRAIN))
    chunk = -(-n // used)
    ranges = [(t * chunk, min(n, (t + 1) * chunk)) for t in range(used) if t * chunk < n]
    partials = np.zeros(threads, dtype=np.float32)
    # torch's per-thread ranges are independent until the last step: they run side by side here too
    partials[: len(ranges)] = split_map(range_sum, ranges)
    return np.float32(np.float32(0) + _range_sum(_Values(partials), 0, threads, lanes))


_compiled_agrees: dict[int, bool] = {}


def _compiled_for(n: int, lanes: int):
    """The compiled first level of the cascade for a job of ``n`` values, once it has given the
    numpy definition's result on a probe (checked once per SIMD width and process); else None."""
    compiled = jit.kernels(n)
    kernel = compiled.block_abs_sums if compiled is not None else None
    if kernel is None:
        return None
    with _lock:
        if lanes not in _compiled_agrees:
            probe = np.random.default_rng(lanes).integers(0, 0x4000, size=(1 << 20) + 4099, dtype=np.uint16)
            reader = _AbsReader(probe, CHUNK_ROWS * ILP * lanes + ILP * lanes)
            for begin, end in ((0, probe.size), (77, probe.size - 5)):
                want = _range_sum(reader, begin, end, lanes)
                got = _range_sum(reader, begin, end, lanes, _compiled_block_sums(kernel, probe))
                if np.float32(got).tobytes() != np.float32(want).tobytes():
                    _compiled_agrees[lanes] = False
                    break
            else:
                _compiled_agrees[lanes] = True
        return kernel if _compiled_agrees[lanes] else None


def calibrated_lanes(threads: int) -> int | None:
    """The SIMD width with which :func:`abs_sum` reproduces the torch build in this process, or None
    (imports torch: the tests and :func:`summation_order` where torch is already loaded use it)."""
    with _lock:
        if threads in _calibration:
            return _calibration[threads]
    import torch

    found = None
    if sys.byteorder == "little":
        g = torch.Generator().manual_seed(12345)
        probes = [
            (torch.randn(n, generator=g) * scale).bfloat16()
            for n, scale in ((1000, 1.0), (40_001, 0.02), (300_007, 1.0), (GRAIN * threads + 37, 3.0))
        ]
        for lanes in LANE_CANDIDATES:
            if all(
                float(abs_sum_bf16(p.view(torch.int16).numpy().view(np.uint16), threads, lanes))
                == float(p.float().abs_().sum())
                for p in probes
            ):
                found = lanes
                break
    with _lock:
        _calibration[threads] = found
    return found


#: the float32 SIMD width of torch's CPU builds (the sum kernel is built without AVX-512; on arm64
#: its NEON vectors hold four floats)
BUILD_LANES = {"arm64": 4, "aarch64": 4}
DEFAULT_LANES = 8


def default_threads() -> int:
    """The intra-op thread count torch starts with: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` when
    set, else the machine's physical cores (its logical CPUs where the topology cannot be read)."""
    for key in ("MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(key, "")
        if text.isdigit() and int(text) > 0:
            return int(text)
    processors = os.cpu_count() or 1
    cores = set()
    for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((cpu / "physical_package_id").read_text().strip(), (cpu / "core_id").read_text().strip()))
        except OSError:
            continue
    return len(cores) if 0 < len(cores) < processors else processors


def summation_order() -> tuple[int, int] | None:
    """(threads, lanes) of torch's float32 sum here, or None where it cannot be reproduced.

    Where torch is already loaded in this process its own thread count and SIMD width are used
    (checked once against it); otherwise those its CPU builds start with on this machine, which
    the tests compare with torch.
    """
    if "torch" in sys.modules:
        import torch

        threads = torch.get_num_threads()
        lanes = calibrated_lanes(threads)
        return None if lanes is None else (threads, lanes)
    if sys.byteorder != "little":
        return None
    return default_threads(), BUILD_LANES.get(platform.machine().lower(), DEFAULT_LANES)
