"""Element types by their safetensors names (``"BF16"``, ``"U8"``, ...), known without importing torch.

Headers (safetensors, Nanotron shards, GGUF float types) name their dtypes; planning work (``inspect
--no-stats``, ``upload --dry-run``, detection) needs only those names and sizes. torch's dtype
objects are looked up from the name when tensor data is actually loaded, so that a command which
never touches tensor values never pays for ``import torch``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: safetensors dtype name -> (torch attribute name, bytes per element)
_TYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "I16": ("int16", 2),
    "I32": ("int32", 4),
    "I64": ("int64", 8),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F32": ("float32", 4),
    "F64": ("float64", 8),
}
NAMES = tuple(_TYPES)
FLOAT_NAMES = ("F16", "BF16", "F32", "F64")


def itemsize(name: str) -> int:
    return _TYPES[name][1]


def torch_name(name: str) -> str:
    """What ``str()`` of the torch dtype says (``"torch.bfloat16"``), for messages, without torch."""
    return f"torch.{_TYPES[name][0]}"


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (imports torch: call it only when loading data)."""
    return _torch_tables()[0][name]


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype; KeyError for one safetensors cannot hold."""
    return _torch_tables()[1][dtype]


def is_float_dtype(dtype: torch.dtype) -> bool:
    return dtype in _torch_tables()[1] and dtype_name(dtype) in FLOAT_NAMES


@lru_cache(maxsize=1)
def _torch_tables() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str]]:
    import torch

    by_name = {name: getattr(torch, attr) for name, (attr, _) in _TYPES.items()}
    return by_name, {v: k for k, v in by_name.items()}
