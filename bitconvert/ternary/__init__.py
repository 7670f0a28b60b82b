"""The ternary weight and its scale: BitNet b1.58's quantization, in numpy (importing it loads no torch).

- :mod:`.linear_class`: what a stored ``weight_scale`` means (mean|W| or 1/mean|W|).
- :mod:`.scale`: :class:`Scale`, one stored scale as bytes, re-expressed with one rounding.
- :mod:`.weight`: :class:`TernaryWeight`, int8 codes and their scale.
- :mod:`.quantize`: absmean quantization bit for bit as transformers, recovery of floats that are
  already codes x one magnitude.
- :mod:`.recipes`: every producer's quantization as a record (``--recipe``).
- :mod:`.packing`: transformers' 2-bit row-block layout; :mod:`.stats`: code counts off stored bytes.
- :mod:`.records`: the exact scale written down beside data that cannot hold it.
- :mod:`.fast`: torch's float32 summation order, codes from bf16 bit patterns, their compiled loops.
"""

from .linear_class import LinearClass
from .packing import VALUES_PER_BYTE, first_invalid_code, pack_codes, unpack_codes
from .quantize import (
    MEAN_ABS_FLOOR,
    NonFiniteWeight,
    absmean_quantize,
    as_ternary,
    quantize,
    quantize_packed,
    recover_ternary,
)
from .scale import Scale
from .weight import TernaryWeight

__all__ = [
    "LinearClass",
    "MEAN_ABS_FLOOR",
    "NonFiniteWeight",
    "Scale",
    "TernaryWeight",
    "VALUES_PER_BYTE",
    "absmean_quantize",
    "as_ternary",
    "first_invalid_code",
    "pack_codes",
    "quantize",
    "quantize_packed",
    "recover_ternary",
    "unpack_codes",
]
