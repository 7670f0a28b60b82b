"""The ``bitconvert`` command: parses arguments, calls the library, renders results.

``common`` holds the shared option types, output helpers and the error boundary; ``options``
generates the write options of ``pack``, ``unpack`` and ``convert`` from the writers' option
dataclasses; ``convert``, ``verify``, ``runtime`` and ``upload`` hold one command group each; ``app``
assembles them. Exit codes are listed in ``common``'s docstring and in README.md.
"""

from .app import app, main

__all__ = ["app", "main"]
