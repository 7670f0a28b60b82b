"""``bitconvert verify``: integrity, comparison and round-trip checks for CI, as a library.

- :func:`verify_integrity` -- one checkpoint: readable, consistent, codes and scales valid,
  a sha256 per tensor (manifest).
- :func:`verify_against` -- two checkpoints in any formats: codes, scales, dense tensors, and
  optionally the reference runtime's logits.
- :func:`verify_roundtrip` -- SRC -> FORMAT -> SRC's format in a temporary directory, compared.
- :func:`verify_target` -- what a consumer (transformers, llama.cpp, bitnet.cpp, Nanotron) is known
  to compute from SRC, against the reference runtime (the rule table: :mod:`.targets`).
- :func:`verify_reproduce` -- a published file rebuilt from its master with each producer recipe.
- :func:`run` -- all of these as one :class:`VerifyRequest` asks (what ``bitconvert verify`` does).

Each returns a :class:`VerifyReport` of :class:`Check` entries; nothing is printed. Only the
``--logits`` comparison computes with torch (the reference runtime); everything else is numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: each public name -> the submodule defining it. Loaded on first use (PEP 562), so that ``upload
#: --dry-run``, which needs only the integrity checks, does not import the comparison, conversion
#: and reproduction modules.
_EXPORTS = {
    "CONSUMERS": "targets",
    "Check": "report",
    "Thresholds": "report",
    "VerifyReport": "report",
    "VerifyRequest": "request",
    "check_line": "report",
    "read_manifest": "manifest",
    "run": "request",
    "verify_against": "compare",
    "verify_integrity": "integrity",
    "verify_reproduce": "reproduce",
    "verify_roundtrip": "roundtrip",
    "verify_target": "targets",
    "write_manifest": "manifest",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the names above, for type checkers (F401: they are exported through _EXPORTS)
    from .compare import verify_against
    from .integrity import verify_integrity
    from .manifest import read_manifest, write_manifest
    from .report import Check, Thresholds, VerifyReport, check_line
    from .reproduce import verify_reproduce
    from .request import VerifyRequest, run
    from .roundtrip import verify_roundtrip
    from .targets import CONSUMERS, verify_target


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
