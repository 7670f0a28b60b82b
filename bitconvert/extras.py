"""Optional parts of bitconvert and what installs them: a missing one is one line naming the extra.

Conversion, verification and upload need only numpy; running the model (``run``, ``logits``,
``verify --logits``) needs PyTorch, which the ``runtime`` extra brings. Asking for a part that is
not installed is a usage error (exit 2), never a traceback.
"""

from __future__ import annotations

import importlib

from .errors import UsageError

#: extra -> (the modules it provides, what to install)
EXTRAS = {
    "runtime": (("torch", "jinja2"), "pip install 'bitconvert[runtime]' (on a CPU machine install the CPU "
                "build of torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu)"),
    "kernels": (("triton",), "pip install 'bitconvert[kernels]'"),
}


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that do not import here. They are imported: only a command about to
    use them asks, so the import is not wasted."""
    absent = []
    for module in EXTRAS[extra][0]:
        try:
            importlib.import_module(module)
        except ImportError:
            absent.append(module)
    return absent


def require(extra: str, what: str) -> None:
    """Refuse ``what`` (e.g. ``"bitconvert run"``) when ``extra`` is not installed, naming how to install it."""
    absent = missing(extra)
    if absent:
        raise UsageError(f"{what} needs {', '.join(absent)} (the {extra} extra): {EXTRAS[extra][1]}")
