"""`verify`: integrity and comparison checks for CI."""

from __future__ import annotations

from .cli import app  # noqa: F401
