"""Nanotron checkpoints: the pure tensor-parallel layout rule (``layout``), the shard files
(``shards``), the side files (``config``), the codebases written for (``flavors``), the write options
(``options``, light, for the command line) and the reader and writer (``reader``, ``writer``)."""
