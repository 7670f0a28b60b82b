"""bitconvert: convert, verify and run BitNet b1.58 (ternary) checkpoints."""

__version__ = "0.1.0"
