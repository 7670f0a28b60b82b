"""The reference PyTorch runtime: runs any checkpoint bitconvert reads, W1.58A8 like transformers.

- :func:`load_model` builds a :class:`RuntimeModel` from a path (any format) or a Checkpoint;
  ``model.logits(tokens)`` gives float32 ``[T, vocab]``.
- :func:`compute_logits` does both in one call (for cross-format comparisons).
- :class:`Generation` / :func:`generate` produce tokens with a KV cache, greedy or sampled.
- :class:`TextTokenizer` turns text into ids via tokenizer.json and the chat template.
"""

from __future__ import annotations

from .generate import Generation, generate
from .model import RuntimeModel, compute_logits, load_model
from .tokenizer import TextTokenizer, stop_token_ids

__all__ = [
    "Generation",
    "RuntimeModel",
    "TextTokenizer",
    "compute_logits",
    "generate",
    "load_model",
    "stop_token_ids",
]
