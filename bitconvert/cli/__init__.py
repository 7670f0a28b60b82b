"""The ``bitconvert`` command: parses arguments, calls the library, renders results.

``common`` holds the shared option types, output helpers and the error boundary; ``convert``,
``verify``, ``runtime`` and ``upload`` one command group each; ``app`` assembles them. Exit codes are
listed in ``common``'s docstring and in README.md.
"""

from .app import app, main

__all__ = ["app", "main"]
