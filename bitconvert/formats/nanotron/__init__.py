"""Nanotron checkpoints: the pure tensor-parallel layout rule (``layout``), the config files
(``config``) and the reader/writer (``format``)."""
