"""GGUF (llama.cpp / bitnet.cpp): block codecs, a bounded header parser, a streaming file writer,
HF <-> GGUF names and metadata, the tokenizer, and the ``gguf`` reader/writer built on them (``format``).
Importing this package loads nothing heavy; ``format`` registers the reader and writer."""
