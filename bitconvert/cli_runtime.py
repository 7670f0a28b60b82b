"""`run` and `logits`: the reference PyTorch runtime from the command line."""

from __future__ import annotations

from .cli import app  # noqa: F401
