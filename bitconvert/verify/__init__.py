"""``bitconvert verify``: integrity, comparison and round-trip checks for CI, as a library.

- :func:`verify_integrity` -- one checkpoint: readable, consistent, codes and scales valid,
  a sha256 per tensor (manifest).
- :func:`verify_against` -- two checkpoints in any formats: codes, scales, dense tensors, and
  optionally the reference runtime's logits.
- :func:`verify_roundtrip` -- SRC -> FORMAT -> SRC's format in a temporary directory, compared.
- :func:`verify_target` -- what a consumer (transformers, llama.cpp, bitnet.cpp, Nanotron) is known
  to compute from SRC, against the reference runtime (the rule table: :mod:`.targets`).
- :func:`verify_reproduce` -- a published file rebuilt from its master with each producer recipe.

Each returns a :class:`VerifyReport` of :class:`Check` entries; nothing is printed.
"""

from __future__ import annotations

from .compare import Thresholds, verify_against
from .integrity import verify_integrity
from .manifest import read_manifest, write_manifest
from .report import Check, VerifyReport, check_line
from .reproduce import verify_reproduce
from .roundtrip import verify_roundtrip
from .targets import CONSUMERS, verify_target

__all__ = [
    "CONSUMERS",
    "Check",
    "Thresholds",
    "VerifyReport",
    "check_line",
    "read_manifest",
    "verify_against",
    "verify_integrity",
    "verify_reproduce",
    "verify_roundtrip",
    "verify_target",
    "write_manifest",
]
