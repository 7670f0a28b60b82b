"""The two conventions for what a stored ternary ``weight_scale`` means (plain data, no torch).

Kept apart from :mod:`bitconvert.ternary` (which re-exports it) so that configs and headers can
be read without importing torch.
"""

from __future__ import annotations

import enum


class LinearClass(str, enum.Enum):
    """What a stored ``weight_scale`` means; the two conventions are reciprocal to each other."""

    AUTOBITLINEAR = "autobitlinear"  # weight_scale = mean|W|; the layer multiplies its output by it
    BITLINEAR = "bitlinear"  # weight_scale = 1/mean|W|; the layer divides its output by it

    @classmethod
    def parse(cls, value: str | None) -> "LinearClass":
        # transformers' BitNetQuantConfig defaults to bitlinear when the key is absent.
        return cls(value) if value else cls.BITLINEAR
