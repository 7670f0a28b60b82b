"""Reading JSON from checkpoint files, with the project's one-line errors and bounded literals.

Every JSON text bitconvert reads (safetensors headers, config.json, the index, Nanotron's files,
tokenizer.json, metadata values) goes through :func:`parse_json_text`, so that a hostile file ends
in a :class:`CheckpointError`: nesting beyond the interpreter's recursion limit, integer literals
too long to convert, ``NaN``/``Infinity`` and undecodable bytes are all refused in one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .errors import CheckpointError

#: the longest number literal accepted: far beyond any real dimension or float, far below the
#: lengths where int() conversion is refused or slow
MAX_NUMBER_DIGITS = 64
#: the deepest nesting accepted: real files nest a handful of levels; code that walks a value
#: recursively (deepcopy, json.dumps) must never meet one deep enough to exhaust the stack
MAX_DEPTH = 128


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ValueError(f"integer literal of {len(text)} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise ValueError(f"number literal of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} overflows a float")
    return value


def _constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def parse_json_text(text: str | bytes, source: str | Path, what: str = "JSON", object_pairs_hook=None) -> Any:
    """The parsed value of ``text``; a CheckpointError naming ``source`` for anything malformed."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(
            text, parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=object_pairs_hook
        )
        # nesting can be no deeper than the number of brackets: only bracket-rich texts are walked
        if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
            raise RecursionError
        return value
    except RecursionError:
        raise CheckpointError(source, f"cannot read {what}: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(source, f"cannot read {what}: {exc}") from None


def _depth(value: Any) -> int:
    """How deeply ``value`` nests, walked without recursion; stops early past MAX_DEPTH."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return deepest


def read_json_object(path: Path, what: str = "JSON", object_pairs_hook=None) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
    data = parse_json_text(text, path, what, object_pairs_hook)
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object" if what != "JSON" else "not a JSON object")
    return data
