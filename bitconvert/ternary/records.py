"""Scale records: a ternary weight's stored scale written down bit for bit beside float or re-scaled data.

Some outputs cannot hold a stored ``weight_scale`` exactly in their own fields: ``unpack`` writes
float weights, GGUF's TQ blocks hold an fp16 ``d`` and an F32 ``.scale`` tensor, Nanotron keeps
latent weights only. Each of them records the original scale under one metadata key, so a later
conversion gets it back exactly. This module is the only place that knows the key and the record.

A record is a JSON list of strings::

    [linear_class, dtype, hex of the raw scale bytes]                      # the stored scale
    [linear_class, dtype, hex, written_dtype, hex of the written value]    # + what the output holds

The optional pair is the magnitude the output actually carries (Nanotron's latent weights), so a
reader trusts the record only while the data still agrees with it. A reader also trusts a record
only while the weight it belongs to is still exactly codes x that scale; that check belongs to the
format, since only the format knows what "the data" is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..dtypes import NAMES, itemsize, value_item
from ..errors import CheckpointError
from ..io.jsonfile import parse_json_text
from .linear_class import LinearClass
from .scale import Scale

#: metadata key (safetensors ``__metadata__``, GGUF string, Nanotron ``custom_metas`` entry)
SCALES_KEY = "bitconvert.ternary_scales"
#: Nanotron's custom_metas uses a key without the namespace (its own JSON object is ours already)
NANOTRON_SCALES_KEY = "ternary_scales"
#: metadata key saying how float weights relate to their recorded scale: absent or ``VALUES_EXACT``
#: for codes x mean|W|, ``VALUES_ONLINE`` for codes x mean|W| / p (see TernaryWeight.online_master)
VALUES_KEY = "bitconvert.ternary_values"
VALUES_EXACT = "codes*scale"
VALUES_ONLINE = "codes*scale/nonzero_fraction"


@dataclass(frozen=True)
class ScaleRecord:
    """One decoded record: the exact stored scale, and what the output holds in its place."""

    scale: Scale
    #: the magnitude the output stores for this weight, where it differs from the scale's own field:
    #: (dtype name, raw bytes)
    written: tuple[str, bytes] | None = None
    #: the float weights beside it are codes x mean|W| / p (``unpack --online-exact``), not codes x mean|W|
    online: bool = False

    def written_item(self) -> float | None:
        return None if self.written is None else value_item(self.written[1], self.written[0])

    def restores(self, stored: Scale) -> Scale:
        """The scale a reader loads for a stored magnitude: this record's exact scale while it rounds to
        exactly ``stored`` (GGUF keeps magnitudes in F32/F16), else ``stored`` itself."""
        if stored.linear_class is LinearClass.AUTOBITLINEAR and self.scale.magnitude_bits(stored.dtype_name) == int.from_bytes(stored.data, "little"):
            return self.scale
        return stored


def _unhex(name: object, hexbits: object, what: str) -> bytes:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"{what} dtype {name!r} is not one of {', '.join(sorted(NAMES))}")
    if not isinstance(hexbits, str) or len(hexbits) > 64:
        raise ValueError(f"{what} bytes are not a short hex string")
    try:
        raw = bytes.fromhex(hexbits)
    except ValueError:
        raise ValueError(f"{what} bytes are not hex") from None
    if len(raw) != itemsize(name):
        raise ValueError(f"{what} has {len(raw)} bytes, a {name} value has {itemsize(name)}")
    return raw


def encode_record(scale: Scale, written: tuple[str, bytes] | None = None) -> list[str]:
    """``[linear_class, dtype, hex]`` (+ ``[written dtype, hex]``): one record as the metadata holds it."""
    item = [scale.linear_class.value, scale.dtype_name, scale.hex()]
    if written is not None:
        item += [written[0], written[1].hex()]
    return item


def decode_record(item: object, source: str | Path, name: str, online: bool = False) -> ScaleRecord:
    """The record ``item`` describes; a CheckpointError naming ``source`` and ``name`` otherwise."""
    try:
        if not isinstance(item, list) or len(item) not in (3, 5):
            raise ValueError("a scale record is a list of 3 or 5 strings")
        try:
            linear_class = LinearClass(item[0])
        except (ValueError, TypeError):
            raise ValueError(f"unknown linear_class {item[0]!r}") from None
        scale = Scale(item[1], _unhex(item[1], item[2], "scale"), linear_class)
        if not scale.is_valid():
            raise ValueError(f"scale {scale.item()!r} is not finite and positive")
        written = (item[3], _unhex(item[3], item[4], "written value")) if len(item) == 5 else None
        return ScaleRecord(scale, written, online)
    except ValueError as exc:
        raise CheckpointError(source, f"malformed {SCALES_KEY} record: {exc}", name) from None


def encode_records(records: dict[str, list[str]]) -> str:
    """The metadata value for already-encoded records (sorted, compact)."""
    return json.dumps(dict(sorted(records.items())), separators=(",", ":"))


def decode_records(data: object, source: str | Path, online: bool = False) -> dict[str, ScaleRecord]:
    """Every record in ``data`` (a JSON text or an already parsed object); one CheckpointError otherwise."""
    if isinstance(data, (str, bytes)):
        data = parse_json_text(data, source, what=SCALES_KEY)
    if not isinstance(data, dict):
        raise CheckpointError(source, f"{SCALES_KEY} is not a JSON object")
    return {str(name): decode_record(item, source, str(name), online) for name, item in data.items()}
