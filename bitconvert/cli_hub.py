"""`upload` and Hub helpers."""

from __future__ import annotations

from .cli import app  # noqa: F401
