"""``gguf``: llama.cpp / bitnet.cpp model files, read and written tensor by tensor.

The two halves register themselves: :mod:`.reader` (a GGUF file as a Checkpoint) and :mod:`.writer`
(a Checkpoint as a GGUF file; options :class:`~.writer.GGUFOptions`); this module gathers them.
Both find each GGML type's codec in :mod:`.types`.
"""

from __future__ import annotations

from .names import permute_qk  # the Q/K row order of the llama architecture
from .reader import GGUFReader
from .writer import GGUFOptions, GGUFWriter

__all__ = ["GGUFOptions", "GGUFReader", "GGUFWriter", "permute_qk"]
