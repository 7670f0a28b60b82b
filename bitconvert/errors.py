"""The two kinds of failure the CLI maps to exit codes: a bad checkpoint (1) and bad usage (2)."""

from __future__ import annotations

from pathlib import Path


class BitconvertError(Exception):
    """Base of every error the library raises on purpose; its message is one line for the user."""

    exit_code = 1


class CheckpointError(BitconvertError):
    """An input checkpoint is unreadable, malformed or inconsistent. Exit code 1."""

    def __init__(self, path: str | Path, problem: str, tensor: str | None = None) -> None:
        self.path = str(path)
        self.tensor = tensor
        self.problem = problem
        where = f"{self.path}: tensor {tensor!r}" if tensor else self.path
        super().__init__(f"{where}: {problem}")


class UsageError(BitconvertError):
    """The request itself cannot be carried out (bad option, existing output, DST inside SRC). Exit 2."""

    exit_code = 2
