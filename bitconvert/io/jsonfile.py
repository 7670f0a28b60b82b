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

from ..errors import CheckpointError

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
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        text = raw.decode("utf-8") if isinstance(text, bytes) else text
        value = json.loads(
            text, parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=object_pairs_hook
        )
        # nesting can be no deeper than the number of brackets: only bracket-rich texts are measured
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
            raise RecursionError
        return value
    except RecursionError:
        raise CheckpointError(source, f"cannot read {what}: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(source, f"cannot read {what}: {exc}") from None


def _depth(raw: bytes) -> int:
    """How deeply a valid JSON text nests: its brackets outside strings, counted with numpy.

    Walking the parsed value instead costs seconds on a large tokenizer.json. The text parsed, so
    its quotes pair up: a quote after an odd run of backslashes is escaped, every other one opens
    or closes a string, and a bracket is structural when an even number of those precede it.
    """
    import numpy as np

    b = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(b == ord('"'))
    real = np.ones(quotes.size, dtype=bool)
    for k in np.flatnonzero(b[np.maximum(quotes - 1, 0)] == ord("\\")):  # rare: only quotes after a backslash
        start = end = int(quotes[k])
        while start and raw[start - 1] == ord("\\"):  # the runs before distinct quotes are disjoint: linear
            start -= 1
        real[k] = (end - start) % 2 == 0
    delimiters = quotes[real]
    opens = np.flatnonzero((b == ord("[")) | (b == ord("{")))
    closes = np.flatnonzero((b == ord("]")) | (b == ord("}")))
    pos = np.concatenate([opens, closes])
    step = np.concatenate([np.ones(opens.size, np.int32), -np.ones(closes.size, np.int32)])
    structural = np.searchsorted(delimiters, pos) % 2 == 0
    order = np.argsort(pos[structural], kind="stable")
    return int(np.cumsum(step[structural][order]).max(initial=0))


def read_json_object(path: Path, what: str = "JSON", object_pairs_hook=None) -> dict[str, Any]:
    from .files import read_regular

    data = parse_json_text(read_regular(path, what), path, what, object_pairs_hook)
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object" if what != "JSON" else "not a JSON object")
    return data
