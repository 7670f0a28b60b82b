"""A quantized linear weight: int8 codes in {-1, 0, 1} and its one stored scale (numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import Dense, float_bits, itemsize, value_item
from .scale import Scale


@dataclass(frozen=True, eq=False)
class TernaryWeight:
    """Codes ``[out, in]`` (int8) and the scale they are multiplied by."""

    codes: np.ndarray
    scale: Scale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def with_scale(self, scale: Scale) -> "TernaryWeight":
        return TernaryWeight(self.codes, scale)

    def dequantize(self, dtype_name: str = "F32") -> Dense:
        """codes x mean|W|: the weight the layer effectively multiplies with (exact in ``dtype_name``)."""
        return _times(self.codes, self.scale.magnitude(dtype_name), dtype_name)

    def online_magnitude(self, dtype_name: str) -> float:
        """mean|W| / p rounded once into ``dtype_name``, p the fraction of non-zero codes.

        Online quantization (transformers' AutoBitLinear ``online`` mode, any absmean QAT) derives
        the scale from the float values as mean|values|. For codes x mean|W| that is p x mean|W|,
        which shrinks the layer by p; for codes x (mean|W| / p) it is mean|W| again (up to one
        rounding in ``dtype_name``), and the codes come back unchanged since |codes / p| >= 1 clamps to 1.
        """
        nonzero = int(np.count_nonzero(self.codes))
        v = self.scale.multiplier
        if nonzero:
            v = v * (self.codes.size / nonzero)
        word = float_bits(v, dtype_name)
        return value_item(word.to_bytes(itemsize(dtype_name), "little"), dtype_name)

    def online_master(self, dtype_name: str = "F32") -> Dense:
        """codes x (mean|W| / p): floats that online absmean quantization maps back to this weight."""
        return _times(self.codes, self.online_magnitude(dtype_name), dtype_name)


def _times(codes: np.ndarray, magnitude: float, dtype_name: str) -> Dense:
    """codes x magnitude in ``dtype_name`` (``magnitude`` already a value of that dtype: exact)."""
    if dtype_name == "F64":
        return Dense(codes.astype(np.float64) * magnitude, "F64")
    values = codes.astype(np.float32)
    values *= np.float32(magnitude)
    return Dense.from_float32(values, dtype_name)
