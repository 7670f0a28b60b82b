"""What a mistyped path probably meant: the closest names beside it, for the one error line."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

#: a folder with more entries than this is not listed (the suggestion is not worth a long scan)
MAX_SIBLINGS = 10_000


def close_siblings(path: Path, n: int = 2) -> list[Path]:
    """Existing entries of ``path``'s folder whose names are close to its name, closest first."""
    parent = path.parent
    try:
        names = []
        with os.scandir(parent) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_SIBLINGS:
                    return []
                names.append(entry.name)
    except OSError:  # the folder itself is missing or unreadable: nothing to offer
        return []
    return [parent / name for name in difflib.get_close_matches(path.name, names, n=n, cutoff=0.6)]


def no_such_path(path: str | Path, what: str = "no such file or directory") -> str:
    """``PATH: no such file or directory``, with ``; did you mean ...?`` where a close name exists."""
    close = close_siblings(Path(path))
    hint = f"; did you mean {' or '.join(str(p) for p in close)}?" if close else ""
    return f"{path}: {what}{hint}"
