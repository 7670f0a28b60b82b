"""Reading a JSON object from a checkpoint's side file, with the project's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "not a JSON object")
    return data
