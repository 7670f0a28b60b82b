"""bitconvert: convert, verify and run BitNet b1.58 (ternary) checkpoints."""

__version__ = "0.1.0"

#: the version of every ``--json`` output's layout (``schema_version`` in each; the JSON Schemas in
#: ``bitconvert/schemas``). Raised only when a key is removed or changes meaning; added keys keep it.
SCHEMA_VERSION = 1
