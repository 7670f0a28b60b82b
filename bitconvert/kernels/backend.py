"""Where the Triton kernels may run: availability, interpreter mode, kernel decoration.

Triton is optional. Whether it compiles or interprets is decided once per process, when Triton
is first imported, from ``TRITON_INTERPRET`` (its own library functions such as ``tl.sum`` are
built for one mode or the other then). This module follows that decision:

* compiling (the normal case): CUDA tensors use the compiled kernels, CPU tensors the torch path;
* interpreting (``TRITON_INTERPRET=1`` was set before Triton's import): CPU tensors, and CUDA
  tensors too, run through Triton's interpreter. It is slow and exists so that the kernels can
  be tested without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Any, Callable

import torch

_import_error: str | None = None
_import_attempted = False


def _import_triton() -> str | None:
    """Import Triton once; None on success, else why it failed."""
    global _import_error, _import_attempted
    if not _import_attempted:
        _import_attempted = True
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except Exception as exc:  # any import failure (missing, broken CUDA libs) means "no Triton"
            _import_error = f"triton is not importable: {type(exc).__name__}: {exc}"
    return _import_error


def triton_unavailable_reason() -> str | None:
    """Why the Triton kernels cannot be used at all (None when they can); meant for skip messages.

    Does not import Triton (that would fix its mode, see the module docstring) unless it is
    imported already or an earlier call needed it.
    """
    if _import_attempted or "triton" in sys.modules:
        return _import_triton()
    try:
        found = importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError) as exc:
        return f"triton cannot be located: {exc}"
    return None if found else "triton is not installed"


def triton_available() -> bool:
    """True when Triton is installed (and imports, once something has imported it)."""
    return triton_unavailable_reason() is None


@functools.lru_cache(maxsize=1)
def _interpreting() -> bool:
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sum, InterpretedFunction)


def triton_interpreting() -> bool:
    """True when Triton runs in interpreter mode; imports Triton, which fixes the mode."""
    return _import_triton() is None and _interpreting()


def uses_triton(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` go through the Triton kernels (else the torch fallback)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _import_triton() is None
    return device.type == "cpu" and triton_interpreting()


def triton_kernel(fn: Callable[..., Any]) -> Any:
    """``triton.jit`` in the process's mode (see the module docstring), whatever the environment now.

    ``triton.jit`` itself reads ``TRITON_INTERPRET`` when it runs; should the variable change
    between Triton's import and a kernel module's import, the kernel and ``tl.sum`` and friends
    would end up in different modes and fail to run together.
    """
    if triton_interpreting():
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


def multiprocessor_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached per device)."""
    return _multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count
