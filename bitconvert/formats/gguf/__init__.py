"""GGUF (llama.cpp / bitnet.cpp): block codecs, a bounded header parser, a streaming file writer,
HF <-> GGUF names and metadata, the tokenizer, and the ``gguf`` reader (:mod:`.reader`) and writer
(:mod:`.writer`, options :class:`~.writer.GGUFOptions`) built on them, each registering itself.
Everything is numpy; importing this package loads nothing heavy."""
