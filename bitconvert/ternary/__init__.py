"""The ternary weight and its scale: BitNet b1.58's quantization, in numpy (importing it loads no torch).

- :mod:`.linear_class`: what a stored ``weight_scale`` means (mean|W| or 1/mean|W|).
- :mod:`.scale`: :class:`Scale`, one stored scale as bytes, re-expressed with one rounding.
- :mod:`.weight`: :class:`TernaryWeight`, int8 codes and their scale.
- :mod:`.quantize`: absmean quantization bit for bit as transformers, recovery of floats that are
  already codes x one magnitude.
- :mod:`.recipes`: every producer's quantization as a record (``--recipe``); :mod:`.producers`: their
  arithmetic.
- :mod:`.packing`: transformers' 2-bit row-block layout; :mod:`.stats`: code counts off stored bytes.
- :mod:`.records`: the exact scale written down beside data that cannot hold it.
- :mod:`.fast`: torch's float32 summation order, codes from bf16 bit patterns, their compiled loops.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

#: each public name -> the submodule defining it, imported on first use (PEP 562): importing one
#: light submodule (``linear_class``, ``recipes``) does not load numpy and the quantizer with it
_EXPORTS = {
    "LinearClass": "linear_class",
    "MEAN_ABS_FLOOR": "quantize",
    "NonFiniteWeight": "quantize",
    "Scale": "scale",
    "TernaryWeight": "weight",
    "VALUES_PER_BYTE": "packing",
    "absmean_quantize": "quantize",
    "as_ternary": "quantize",
    "first_invalid_code": "packing",
    "pack_codes": "packing",
    "quantize": "quantize",
    "quantize_packed": "quantize",
    "recover_ternary": "quantize",
    "unpack_codes": "packing",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers (F401: they are exported through _EXPORTS)
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


class _Package(types.ModuleType):
    """This package, with its names resolved on first use."""

    def __getattr__(self, name: str) -> Any:
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        setattr(self, name, value)  # looked up once
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # Loading a submodule binds it on its package: ``quantize`` would become the module
        # ``ternary.quantize`` instead of the function it exports (as when this package imported it).
        if isinstance(value, types.ModuleType) and name in _EXPORTS and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
