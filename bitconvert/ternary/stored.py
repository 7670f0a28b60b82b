"""Tensors as their stored bytes: what checks and hashes need of a tensor, without torch.

Planning commands (``upload --dry-run``'s integrity checks) look at every tensor but do no
arithmetic on it: whether floats are finite is a question about exponent bits, a scale's value
is one number decoded from its bytes, and a hash is of the bytes themselves. Readers that keep
a tensor's stored bytes hand them out as numpy arrays (``TensorEntry.load_stored``,
``load_packed``, ``load_stored_scale``); loading the tensor itself (torch) stays the readers'
``load``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..dtypes import NAMES, itemsize, torch_dtype
from .linear_class import LinearClass

if TYPE_CHECKING:
    import torch

    from . import TernaryScale

#: per float dtype: the unsigned word holding one value, and its exponent bits (all set: inf or nan)
EXPONENT_BITS: dict[str, tuple[type, int]] = {
    "BF16": (np.uint16, 0x7F80),
    "F16": (np.uint16, 0x7C00),
    "F32": (np.uint32, 0x7F800000),
    "F64": (np.uint64, 0x7FF0000000000000),
}

#: values per step: small enough to stay in cache
_CHUNK = 1 << 16


def non_finite_bits(raw: np.ndarray, dtype_name: str, chunk: int = _CHUNK) -> int:
    """How many values of float dtype ``dtype_name`` in the bytes ``raw`` are inf or nan, from their
    exponent bits, a cache-sized chunk at a time."""
    word, mask = EXPONENT_BITS[dtype_name]
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(word)
    exp = word(mask)
    tmp = np.empty(min(chunk, bits.size), dtype=word)
    bad = 0
    for start in range(0, bits.size, chunk):
        t = tmp[: min(chunk, bits.size - start)]
        np.bitwise_and(bits[start : start + chunk], exp, out=t)
        bad += int(np.count_nonzero(t == exp))
    return bad


def float_bits(value: np.float64, dtype_name: str) -> int:
    """The word storing ``value`` in float dtype ``dtype_name``, rounded as torch's ``.to(dtype)`` does."""
    with np.errstate(over="ignore"):
        if dtype_name == "F64":
            return int(np.float64(value).view(np.uint64))
        f32 = np.float32(value)
        if dtype_name == "F32":
            return int(f32.view(np.uint32))
        if dtype_name == "F16":
            return int(np.float16(f32).view(np.uint16))
    bits = int(f32.view(np.uint32))  # BF16: the top half, rounded to nearest even
    if f32 != f32:
        return 0x7FC0
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def ternary_value_counts(raw: np.ndarray, dtype_name: str, magnitude: int, chunk: int = _CHUNK) -> tuple[int, int, int] | None:
    """Counts of -m, 0 and +m among float values stored as ``raw`` (``magnitude`` the word of m, finite
    and positive), from their bits; None when any value is something else. -0 counts as 0."""
    word, _ = EXPONENT_BITS[dtype_name]
    sign = word(1 << (8 * np.dtype(word).itemsize - 1))
    bits = np.ascontiguousarray(raw).reshape(-1).view(np.uint8).view(word)
    plus_word, minus_word = word(magnitude), word(magnitude) | sign
    plus = minus = zero = 0
    tmp = np.empty(min(chunk, bits.size), dtype=word)
    for start in range(0, bits.size, chunk):
        part = bits[start : start + chunk]
        plus += int(np.count_nonzero(part == plus_word))
        minus += int(np.count_nonzero(part == minus_word))
        t = tmp[: part.size]
        np.bitwise_and(part, ~sign, out=t)
        zero += int(np.count_nonzero(t == 0))
        if plus + minus + zero != start + part.size:
            return None
    return minus, zero, plus


def recorded_ternary_counts(
    raw: np.ndarray, dtype_name: str, magnitude: int, scale: StoredScale
) -> tuple[tuple[int, int, int, int], StoredScale] | None:
    """Code counts of floats that are exactly codes x one magnitude (``magnitude``, a word of
    ``dtype_name``) and the recorded ``scale`` they stand for; None when they are anything else, or
    the magnitude is not finite and positive (then the reader's loading decides what they are)."""
    v = value_item(magnitude.to_bytes(itemsize(dtype_name), "little"), dtype_name)
    if not 0 < v < float("inf"):
        return None
    found = ternary_value_counts(raw, dtype_name, magnitude)
    return None if found is None else ((*found, 0), scale)


#: numpy's reading of one stored value of each dtype (bf16, which numpy lacks, is the high half of an f32)
_NUMPY = {"BOOL": "?", "U8": "<u1", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
          "F16": "<f2", "F32": "<f4", "F64": "<f8"}  # fmt: skip


def value_item(data: bytes, dtype_name: str) -> float:
    """One stored value of dtype ``dtype_name`` (its raw bytes) as a Python float, exactly."""
    if dtype_name == "BF16":
        return float(np.frombuffer(b"\0\0" + data, dtype="<f4")[0])
    return float(np.frombuffer(data, dtype=_NUMPY[dtype_name])[0])


def value_tensor(data: bytes, dtype_name: str) -> torch.Tensor:
    """Stored bytes as a one-dimensional tensor of their dtype (imports torch)."""
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch_dtype(dtype_name)).clone()


@dataclass(frozen=True)
class StoredScale:
    """A ternary weight's stored scale as bytes: one value of dtype ``dtype_name`` and its meaning
    (the torch-free twin of :class:`~bitconvert.ternary.TernaryScale`, which :meth:`to_scale` builds)."""

    dtype_name: str
    data: bytes
    linear_class: LinearClass

    def __post_init__(self) -> None:
        if self.dtype_name not in NAMES or len(self.data) != itemsize(self.dtype_name):
            raise ValueError(f"a stored scale is one value, got {len(self.data)} bytes of {self.dtype_name}")

    @classmethod
    def of(cls, scale: TernaryScale) -> "StoredScale":
        import torch

        from ..dtypes import dtype_name

        raw = scale.value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return cls(dtype_name(scale.dtype), raw, scale.linear_class)

    def item(self) -> float:
        """The stored value, exactly, as a Python float (as ``TernaryScale.item``)."""
        return value_item(self.data, self.dtype_name)

    def is_valid(self) -> bool:
        v = self.item()
        return v > 0 and v != float("inf") and v == v

    def magnitude_bits(self, dtype_name: str) -> int:
        """mean|W| rounded once into float dtype ``dtype_name``, as the stored word (an int): what
        :meth:`TernaryScale.magnitude` gives, without torch. Like torch, a float64 goes to a 16-bit
        float through float32 (round to nearest even at each step)."""
        v = np.float64(self.item())
        with np.errstate(divide="ignore"):
            m = v if self.linear_class is LinearClass.AUTOBITLINEAR else np.float64(1.0) / v
        return float_bits(m, dtype_name)

    def to_scale(self) -> TernaryScale:
        """The :class:`~bitconvert.ternary.TernaryScale` of these bytes (imports torch)."""
        from . import TernaryScale

        return TernaryScale(value_tensor(self.data, self.dtype_name).reshape(1), self.linear_class)
