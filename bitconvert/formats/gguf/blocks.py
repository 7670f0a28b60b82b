"""Block sizes of the ternary GGML types, as plain numbers (the type table and the codecs both use them)."""

from __future__ import annotations

from gguf.constants import QK_K as _QK_K

QK_K = _QK_K  # TQ block
QK_I2_S = 128  # I2_S block (x86)
I2_S_TAIL = 32  # bytes after the packed codes: the fp32 scale, then padding
