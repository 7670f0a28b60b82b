"""Mutation fuzzers for bitconvert's parsers; run ``python3 -m tests.fuzz --help`` (see README.md here)."""
