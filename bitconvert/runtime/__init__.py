"""The reference PyTorch runtime: runs any checkpoint bitconvert reads, W1.58A8 like transformers.

- :func:`load_model` builds a :class:`RuntimeModel` from a path (any format) or a Checkpoint;
  ``model.logits(tokens)`` gives float32 ``[T, vocab]``. Values come from the checkpoint in numpy
  and become torch tensors here; each layer runs as its family's runtime block (:mod:`.blocks`).
- :func:`compute_logits` does both in one call (for cross-format comparisons).
- :class:`Generation` / :func:`generate` produce tokens with a KV cache, greedy or sampled.
- :func:`embed` / :func:`load_embedder`: sentence embeddings of an embedding model (BitNet
  Embeddings), pooled and normalized as its sentence-transformers side files say.
- :class:`TextTokenizer` turns text into ids via tokenizer.json and the chat template.
- :func:`quantize_activations`: the per-token int8 activation quantization of every ternary layer.

Importing this package imports torch; nothing below it (ternary, model, formats, io) imports it.
"""

from __future__ import annotations

from ..kernels.activations import quantize_activations
from .blocks import BLOCKS, register_block
from .embed import Embedder, embed, load_embedder
from .generate import Generation, generate
from .model import RuntimeModel, compute_logits, load_model
from .tokenizer import TextTokenizer, stop_token_ids

__all__ = [
    "BLOCKS",
    "Embedder",
    "Generation",
    "RuntimeModel",
    "TextTokenizer",
    "compute_logits",
    "embed",
    "generate",
    "load_embedder",
    "load_model",
    "quantize_activations",
    "register_block",
    "stop_token_ids",
]
