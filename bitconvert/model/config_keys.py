"""How config.json spells what a model needs beyond its dimensions: the activation key, the RoPE
bases in every spelling transformers writes, and which layers use sliding-window attention.

Each reader takes the parsed dict and the family record (for transformers' class defaults) and
raises ValueError naming the key (``ModelConfig.from_hf_dict`` turns it into one line naming the
file), as :mod:`bitconvert.io.values` does.
"""

from __future__ import annotations

from typing import Any

from ..io.values import flag, positive, text, whole
from .families import Family

#: the attention kinds a layer of ``layer_types`` can be (transformers' names)
FULL_ATTENTION, SLIDING_ATTENTION = "full_attention", "sliding_attention"
LAYER_TYPES = (FULL_ATTENTION, SLIDING_ATTENTION)
#: bounds as in config.py (a layer count, a window)
MAX_LAYERS = 10_000
MAX_WINDOW = 2**31 - 1


def activation(d: dict[str, Any], family: Family) -> str:
    """The activation under the first of the family's keys the config has, else the family's."""
    for key in family.activation_keys:
        if d.get(key) is not None:
            return text(d, key)
    return family.hidden_act


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _object(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = d.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}{key} must be an object, got {value!r:.80}")
    return value


def rope_bases(d: dict[str, Any], family: Family) -> tuple[float, float | None]:
    """(RoPE base of full-attention layers, of sliding ones), in every spelling transformers writes:
    top-level ``rope_theta`` / ``rope_local_base_freq`` (4.x), ``rope_parameters.rope_theta``, or
    ``rope_parameters`` per layer type (5.x Gemma3: ``full_attention`` / ``sliding_attention``)."""
    rope = _object(d, "rope_parameters")
    per_type = FULL_ATTENTION in rope or SLIDING_ATTENTION in rope
    full = _object(rope, FULL_ATTENTION, "rope_parameters.") if per_type else rope
    sliding = _object(rope, SLIDING_ATTENTION, "rope_parameters.") if per_type else {}
    prefix = f"rope_parameters.{FULL_ATTENTION}." if per_type else "rope_parameters."
    theta = positive(d, "rope_theta", None) or positive(full, "rope_theta", None, prefix)
    local = positive(d, "rope_local_base_freq", None) or positive(
        sliding, "rope_theta", None, f"rope_parameters.{SLIDING_ATTENTION}."
    )
    return (
        theta or float(family.default("rope_theta", 10000.0)),  # type: ignore[arg-type]
        local or family.default("rope_local_base_freq"),  # type: ignore[return-value]
    )


def write_rope_bases(d: dict[str, Any], theta: float, local: float | None) -> None:
    """Write the RoPE bases back in the spelling the config already uses (top level for a new one)."""
    rope = d.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get(FULL_ATTENTION), dict):
        rope[FULL_ATTENTION]["rope_theta"] = theta
        if local is not None and isinstance(rope.get(SLIDING_ATTENTION), dict):
            rope[SLIDING_ATTENTION]["rope_theta"] = local
    elif isinstance(rope, dict):
        rope["rope_theta"] = theta
    else:
        d["rope_theta"] = theta
    if local is not None and "rope_local_base_freq" in d:
        d["rope_local_base_freq"] = local


def attention_layout(d: dict[str, Any], family: Family, layers: int) -> tuple[tuple[str, ...], int | None]:
    """(each layer's attention kind, the sliding window) as transformers resolves them: an explicit
    ``layer_types``; else Gemma3's pattern (every ``sliding_window_pattern``-th layer full, the rest
    sliding); else Qwen3's (layers from ``max_window_layers`` on slide where ``use_sliding_window``).
    Empty and None where no layer slides."""
    given = d.get("layer_types")
    pattern_default = family.default("sliding_window_pattern")
    window_default = family.default("sliding_window")
    if given is not None:
        if not isinstance(given, list) or not all(isinstance(t, str) and t in LAYER_TYPES for t in given):
            raise ValueError(f"layer_types must be a list of {' or '.join(LAYER_TYPES)}, got {given!r:.80}")
        types = tuple(given)
    elif pattern_default is not None:
        key = "sliding_window_pattern" if d.get("sliding_window_pattern") is not None else "_sliding_window_pattern"
        pattern = whole(d, key, MAX_LAYERS, pattern_default)
        types = tuple(SLIDING_ATTENTION if (i + 1) % pattern else FULL_ATTENTION for i in range(layers))
    elif flag(d, "use_sliding_window", False) and d.get("sliding_window", window_default) is not None:
        first = whole(d, "max_window_layers", MAX_LAYERS, family.default("max_window_layers", 28))
        types = tuple(SLIDING_ATTENTION if i >= first else FULL_ATTENTION for i in range(layers))
    else:
        return (), None
    if SLIDING_ATTENTION not in types:
        return (types if given is not None else ()), None
    window = whole(d, "sliding_window", MAX_WINDOW, window_default)
    if window is None:
        raise ValueError("layer_types has sliding layers but sliding_window is null")
    return types, window
