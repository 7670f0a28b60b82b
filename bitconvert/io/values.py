"""Typed reading of values from parsed JSON configs: every config reader in the project uses these.

JSON says what a value is; these accept only that. A boolean is JSON ``true``/``false`` (the string
``"false"`` is not false, and ``bool("false")`` would make it true); a whole number is a JSON integer
(a float that happens to be whole is still refused, as transformers would trip on it later); a float
is finite. Each raises ValueError naming the key (with ``prefix``, e.g. ``quantization_config.``);
callers turn it into a one-line CheckpointError naming the file.
"""

from __future__ import annotations

import math
from typing import Any

_ABSENT: Any = object()


def flag(d: dict[str, Any], key: str, default: bool | None = _ABSENT, prefix: str = "") -> bool | None:
    """``d[key]`` as a bool: JSON true/false only (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        if default is _ABSENT:
            raise KeyError(prefix + key)
        return default
    if not isinstance(value, bool):
        raise ValueError(f"{prefix}{key} must be true or false, got {value!r:.80}")
    return value


def whole(d: dict[str, Any], key: str, bound: int, default: Any = _ABSENT, prefix: str = "") -> Any:
    """``d[key]`` as a whole number from 1 to ``bound`` (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        if default is _ABSENT:
            raise KeyError(prefix + key)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{prefix}{key} must be a whole number, got {value!r:.80}")
    if not 0 < value <= bound:
        raise ValueError(f"{prefix}{key} must be between 1 and {bound}, got {value}")
    return value


def positive(d: dict[str, Any], key: str, default: float | None = _ABSENT, prefix: str = "") -> float | None:
    """``d[key]`` as a finite positive number (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        if default is _ABSENT:
            raise KeyError(prefix + key)
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{prefix}{key} must be a finite positive number, got {value!r:.80}")
    return float(value)


def text(d: dict[str, Any], key: str, default: str | None = _ABSENT, prefix: str = "") -> str | None:
    """``d[key]`` as a string (``default`` when absent or null)."""
    value = d.get(key)
    if value is None:
        if default is _ABSENT:
            raise KeyError(prefix + key)
        return default
    if not isinstance(value, str):
        raise ValueError(f"{prefix}{key} must be a string, got {value!r:.80}")
    return value


def token_ids(d: dict[str, Any], key: str, bound: int, single: bool = False) -> int | list[int] | None:
    """A token id (or, unless ``single``, a list of them) as transformers accepts it; null stays None."""
    value = d.get(key)
    ids = [value] if single or not isinstance(value, list) else value
    if value is None or all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= bound for i in ids):
        return value
    raise ValueError(f"{key} must be a token id{'' if single else ' or a list of them'}, got {value!r:.80}")
