"""Exact stored scales recorded beside float weights, so a later pack gets them back bit for bit.

``unpack`` (and formats whose own scale field cannot hold the original value exactly) record each
quantized weight's stored scale as ``[linear_class, dtype, hex of the raw bytes]`` under one
metadata key. A reader trusts a hint only while the weight it belongs to is still exactly
codes x that scale.
"""

from __future__ import annotations

import json

import torch

from .safetensors_io import DTYPE_NAMES, DTYPES
from .ternary import LinearClass, TernaryScale

#: metadata key (safetensors ``__metadata__`` / GGUF string) holding the JSON map name -> scale
SCALE_HINTS_KEY = "bitconvert.ternary_scales"
#: metadata key saying how float weights relate to their hinted scale: absent or ``VALUES_EXACT``
#: for codes x mean|W|, ``VALUES_ONLINE`` for codes x mean|W| / p (see TernaryWeight.online_master)
VALUES_KEY = "bitconvert.ternary_values"
VALUES_EXACT = "codes*scale"
VALUES_ONLINE = "codes*scale/nonzero_fraction"


def encode_scale(scale: TernaryScale) -> list[str]:
    raw = scale.value.reshape(1).contiguous().view(torch.uint8).numpy().tobytes()
    return [scale.linear_class.value, DTYPE_NAMES[scale.dtype], raw.hex()]


def decode_scale(item: object) -> TernaryScale | None:
    """The scale an item describes, or None when it is malformed or not finite and positive."""
    try:
        cls, dtype, hexbits = item  # type: ignore[misc]
        raw = bytearray.fromhex(hexbits)
        value = torch.frombuffer(raw, dtype=DTYPES[dtype]).clone().reshape(1)
        scale = TernaryScale(value, LinearClass(cls))
        return scale if scale.is_valid() else None
    except (TypeError, ValueError, KeyError, RuntimeError):
        return None


def encode_hints(scales: dict[str, TernaryScale]) -> str:
    return json.dumps({name: encode_scale(s) for name, s in scales.items()}, separators=(",", ":"))


def decode_hints(text: str) -> dict[str, TernaryScale]:
    """Every well-formed hint in ``text``; raises ValueError when the text is not a JSON object."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("scale hints are not a JSON object")
    out = {}
    for name, item in data.items():
        scale = decode_scale(item)
        if scale is not None:
            out[name] = scale
    return out
