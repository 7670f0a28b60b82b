"""GGUF support: the ternary block codecs, a bounded header parser, a streaming file writer,
HF <-> GGUF tensor names and metadata (hyperparameters, tokenizer).

``bitconvert.formats.gguf`` builds the ``gguf`` reader and writer from these pieces; nothing here
knows about checkpoints on its own, so each piece can be tested against gguf-py and llama.cpp.
"""
