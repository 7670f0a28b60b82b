"""What the checks share about loaded values: read errors, and how two values are told apart (numpy).

The checks see each tensor as :func:`bitconvert.model.checkpoint.load_recorded` loads it: a LATENT
weight whose floats still are exactly codes x the scale its record wrote down is that ternary weight.
"""

from __future__ import annotations

import math

import numpy as np

from ..dtypes import Dense
from ..errors import CheckpointError
from ..model.checkpoint import Kind, TensorEntry, Value

#: load failures that mean "this tensor is unreadable" rather than a bug in bitconvert
READ_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError)

#: values compared per step: float64 copies of a chunk, not of a whole embedding
_CHUNK = 1 << 18


def recorded(entry: TensorEntry, value: Value) -> bool:
    """Whether ``value`` is a ternary weight read from floats through their scale record."""
    return entry.kind is Kind.LATENT and not isinstance(value, Dense)


def read_problem(exc: BaseException) -> str:
    """What went wrong reading a tensor, in the reader's words where it has them."""
    return exc.problem if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"


def max_abs_diff(a: Dense, b: Dense) -> float:
    """The largest |a - b| in float64 over two values of one shape. Infinities or NaNs at the same
    place are equal (a bit-exact copy); any other non-finite difference is inf."""
    fa, fb = a.data.reshape(-1), b.data.reshape(-1)
    worst = 0.0
    for start in range(0, fa.size, _CHUNK):
        x = Dense(fa[start : start + _CHUNK], a.dtype_name).float64()
        y = Dense(fb[start : start + _CHUNK], b.dtype_name).float64()
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(x - y)
        special = ~np.isfinite(x) & ~np.isfinite(y) & ((x == y) | (np.isnan(x) & np.isnan(y)))
        diff[special] = 0.0
        diff[np.isnan(diff)] = math.inf
        if diff.size:
            worst = max(worst, float(diff.max()))
    return worst


def first_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, tuple[int, ...] | None]:
    """How many elements of two same-shaped arrays differ, and the index of the first (row-major)."""
    diff = a != b
    n = int(np.count_nonzero(diff))
    if not n:
        return 0, None
    first = int(np.argmax(diff.reshape(-1)))
    return n, tuple(int(i) for i in np.unravel_index(first, a.shape))
