"""A ternary weight's one scale, exactly as stored: its bytes, their dtype, and what they mean.

Every format stores the per-tensor scale its own way (a BF16 ``weight_scale`` of 1/mean|W|, an fp32
magnitude after I2_S codes, an F32 ``.scale`` tensor); bitconvert carries it as those bytes so
that a conversion between quantized formats re-expresses it only where the target cannot hold it,
and every re-expression rounds once from the exact stored value, as torch's ``.to()`` would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dtypes import NAMES, float_bits, itemsize, value_item
from .linear_class import LinearClass


@dataclass(frozen=True)
class Scale:
    """One stored scale: ``data`` holds one value of dtype ``dtype_name``; ``linear_class`` says
    whether it is mean|W| (autobitlinear, the layer multiplies) or 1/mean|W| (bitlinear, it divides)."""

    dtype_name: str
    data: bytes
    linear_class: LinearClass

    def __post_init__(self) -> None:
        if self.dtype_name not in NAMES or len(self.data) != itemsize(self.dtype_name):
            raise ValueError(f"a ternary scale is one value, got {len(self.data)} bytes of {self.dtype_name}")

    @classmethod
    def of(cls, value: float, linear_class: LinearClass, dtype_name: str) -> "Scale":
        """``value`` (a float64) stored in ``dtype_name``, rounded once as torch rounds."""
        word = float_bits(value, dtype_name)
        return cls(dtype_name, word.to_bytes(itemsize(dtype_name), "little"), linear_class)

    @classmethod
    def from_mean(cls, mean: float, linear_class: LinearClass, dtype_name: str) -> "Scale":
        """The scale a quantizer stores for fp32 ``mean`` = max(mean|W|, floor): mean|W| itself, or
        the fp32 reciprocal ``s = 1/mean`` transformers' WeightQuant computes, then rounded to ``dtype_name``."""
        if linear_class is LinearClass.AUTOBITLINEAR:
            return cls.of(float(np.float32(mean)), linear_class, dtype_name)
        with np.errstate(divide="ignore", over="ignore"):
            inverse = np.float32(1.0) / np.float32(mean)
        return cls.of(float(inverse), linear_class, dtype_name)

    def item(self) -> float:
        """The stored value, exactly, as a Python float."""
        return value_item(self.data, self.dtype_name)

    def is_valid(self, all_zero: bool = False) -> bool:
        """Finite and positive; or 0 for a weight whose codes are all zero (``all_zero``): bitnet.cpp's
        ``quantize_i2_s`` stores 0 there, and a zero weight computes zero whatever its scale."""
        v = self.item()
        return (v > 0 and v != math.inf) or (all_zero and v == 0)

    @property
    def multiplier(self) -> float:
        """mean|W|, the factor applied to ``codes @ x`` (float64, from the stored value)."""
        v = self.item()
        if self.linear_class is LinearClass.AUTOBITLINEAR:
            return v
        return math.inf if v == 0 else 1.0 / v

    def magnitude_bits(self, dtype_name: str) -> int:
        """mean|W| rounded once from float64 into float dtype ``dtype_name``, as the stored word."""
        return float_bits(self.multiplier, dtype_name)

    def magnitude(self, dtype_name: str) -> float:
        """mean|W| rounded once into ``dtype_name``, as a Python float (exact)."""
        word = self.magnitude_bits(dtype_name)
        return value_item(word.to_bytes(itemsize(dtype_name), "little"), dtype_name)

    def to(self, linear_class: LinearClass, dtype_name: str) -> "Scale":
        """This scale re-expressed; exact unless the convention flips or the dtype narrows."""
        if linear_class is self.linear_class and dtype_name == self.dtype_name:
            return self
        v = self.item()
        if linear_class is not self.linear_class:
            # 0 (an all-zero weight's, see is_valid) has no reciprocal; any scale serves those codes
            v = 1.0 if v == 0 else 1.0 / v
        return Scale.of(v, linear_class, dtype_name)

    def same_as(self, other: "Scale") -> bool:
        return self == other

    def hex(self) -> str:
        return self.data.hex()

    def __repr__(self) -> str:
        return f"Scale({self.item()!r} {self.dtype_name} {self.linear_class.value})"
