"""Model configuration: dimensions, tying, RoPE, attention layout, quantization config; tensor names
from the family; config.json I/O.

Keys a config.json leaves out take the family record's transformers class defaults
(``Family.config_defaults``: Qwen3's head_dim 128, Gemma3's rope bases and sliding window), else
the values every BitNet family shares. Keys this model does not interpret stay in ``raw`` and are
written back unchanged.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dtypes import config_name
from ..errors import CheckpointError
from ..io.files import read_regular
from ..io.jsonfile import parse_json_text
from ..io.values import flag, positive, text, token_ids, whole
from ..ternary.linear_class import LinearClass
from .config_keys import (
    SLIDING_ATTENTION,
    activation,
    attention_layout,
    optional_float,
    rope_bases,
    write_rope_bases,
)
from .families import EMBEDDING_ROLE, FINAL_NORM_ROLE, LM_HEAD_ROLE, Family, detect_family

#: Upper bounds on what a config may declare, checked before any per-layer list is built. Far
#: beyond real models (the deepest have a few hundred layers; GGUF stores these counts as u32),
#: small enough that the name and shape lists a config implies stay a few megabytes.
MAX_LAYERS = 10_000
MAX_DIM = 2**31 - 1


#: Buffers some exporters save that carry no model state (recomputed from the config).
IGNORED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)



class QuantMode(str, enum.Enum):
    OFFLINE = "offline"  # packed (or float ternary) weights on disk
    ONLINE = "online"  # latent float weights quantized in every forward pass


@dataclass(frozen=True)
class QuantConfig:
    """transformers' ``quantization_config`` for ``quant_method: "bitnet"``."""

    linear_class: LinearClass = LinearClass.BITLINEAR
    mode: QuantMode = QuantMode.OFFLINE
    modules_to_not_convert: tuple[str, ...] = ()
    use_rms_norm: bool = False
    rms_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        skip = d.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(m, str) for m in skip):
            raise ValueError(f"quantization_config.modules_to_not_convert must be a list of names, got {skip!r:.80}")
        return cls(
            linear_class=LinearClass.parse(text(d, "linear_class", None, "quantization_config.")),
            mode=QuantMode(text(d, "quantization_mode", None, "quantization_config.") or "offline"),
            modules_to_not_convert=tuple(skip),
            use_rms_norm=flag(d, "use_rms_norm", False, "quantization_config."),
            rms_norm_eps=positive(d, "rms_norm_eps", 1e-6, "quantization_config."),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "quant_method": "bitnet",
            "linear_class": self.linear_class.value,
            "quantization_mode": self.mode.value,
            "use_rms_norm": self.use_rms_norm,
            "rms_norm_eps": self.rms_norm_eps,
        }
        if self.modules_to_not_convert:
            d["modules_to_not_convert"] = list(self.modules_to_not_convert)
        return d


@dataclass
class ModelConfig:
    family: Family
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    hidden_act: str
    head_dim: int
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    quantization: QuantConfig | None = None
    #: each layer's attention (FULL_ATTENTION / SLIDING_ATTENTION); empty: every layer full
    layer_types: tuple[str, ...] = ()
    #: tokens a sliding layer sees (itself and the window - 1 before it); None: no sliding layer
    sliding_window: int | None = None
    #: the RoPE base of sliding layers (Gemma3's rope_local_base_freq); None: rope_theta everywhere
    rope_local_theta: float | None = None
    #: attention scores are scaled by query_pre_attn_scalar^-0.5 (Gemma3); None: head_dim^-0.5
    query_pre_attn_scalar: float | None = None
    #: every token attends to every other (Gemma3's use_bidirectional_attention); else causal
    bidirectional: bool = False
    #: tanh soft-capping of attention scores / final logits (Gemma2-style); None: none
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    #: the source config.json as read, so keys this model does not interpret survive a conversion
    raw: dict[str, Any] = field(default_factory=dict)
    #: keys that appeared more than once in the source config.json (the last one wins, as in transformers)
    duplicate_keys: list[str] = field(default_factory=list)

    # --- tensor names -------------------------------------------------------------------------

    def dims(self) -> dict[str, int]:
        """The named dimensions family tensor shapes are written in."""
        return {
            "vocab": self.vocab_size,
            "hidden": self.hidden_size,
            "intermediate": self.intermediate_size,
            "q": self.num_attention_heads * self.head_dim,
            "kv": self.num_key_value_heads * self.head_dim,
            "head_dim": self.head_dim,
        }

    def tensor_name(self, role: str) -> str:
        """The HF name of a global tensor (``families.EMBEDDING_ROLE`` ...) in this model's family."""
        return self.family.global_name(role)

    def layer_prefix(self, layer: int) -> str:
        return self.family.layer_prefix(layer)

    def norm_offsets(self) -> dict[str, float]:
        """HF name -> the offset its norm adds to the stored gain (``NormSpec.offset``), where not 0."""
        out = {
            self.layer_prefix(i) + n.path + ".weight": n.offset
            for i in range(self.num_hidden_layers)
            for n in self.family.norms
            if n.offset
        }
        if self.family.final_norm_offset:
            out[self.tensor_name(FINAL_NORM_ROLE)] = self.family.final_norm_offset
        return out

    def layer_attention(self, layer: int) -> tuple[float, int | None]:
        """(RoPE base, sliding window) of layer ``layer``: a sliding layer sees itself and the
        ``window - 1`` tokens before it and rotates with ``rope_local_theta`` where the config has one;
        any other layer is full causal attention with ``rope_theta`` (window None)."""
        if self.layer_types and self.layer_types[layer] == SLIDING_ATTENTION and self.sliding_window is not None:
            return (self.rope_local_theta or self.rope_theta), self.sliding_window
        return self.rope_theta, None

    def quantized_linear_names(self) -> list[str]:
        names = [
            f"{self.layer_prefix(i)}{lin.path}.weight" for i in range(self.num_hidden_layers) for lin in self.family.linears
        ]
        skip = self.quantization.modules_to_not_convert if self.quantization else ()
        return [n for n in names if not any(n.startswith(m + ".") or n == m for m in skip)]

    def is_quantized_linear(self, name: str) -> bool:
        return name in set(self.quantized_linear_names())

    def implied_tensor_count(self) -> int:
        """How many tensors :meth:`expected_shapes` lists, computed without building it."""
        per_layer = len(self.family.norms) + len(self.family.linears)
        return 2 + self.num_hidden_layers * per_layer + (not self.tie_word_embeddings)

    def check_fits(self, stored: int, where: str | Path, what: str = "tensors") -> None:
        """Refuse a config that implies more tensors than the files hold, before any list is built."""
        need = self.implied_tensor_count()
        if need > stored:
            raise CheckpointError(
                where,
                f"the config implies {need} tensors ({self.num_hidden_layers} layers), the files hold {stored} {what}",
            )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor this config implies, with its logical (unpacked) shape, in HF naming."""
        d = self.dims()
        shapes: dict[str, tuple[int, ...]] = {self.tensor_name(EMBEDDING_ROLE): (d["vocab"], d["hidden"])}
        for n in range(self.num_hidden_layers):
            p = self.layer_prefix(n)
            for path, dims in self.family.layer_tensors():
                shapes[p + path + ".weight"] = tuple(d[x] for x in dims)
        shapes[self.tensor_name(FINAL_NORM_ROLE)] = (d["hidden"],)
        if not self.tie_word_embeddings:
            shapes[self.tensor_name(LM_HEAD_ROLE)] = (d["vocab"], d["hidden"])
        return shapes

    # --- consistency ----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Inconsistencies that make the config unusable, each a short sentence."""
        out = []
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if getattr(self, key) <= 0:
                out.append(f"{key} must be positive, got {getattr(self, key)}")
        if self.num_attention_heads > 0 and self.num_key_value_heads > 0:
            if self.num_attention_heads % self.num_key_value_heads:
                out.append(
                    f"num_key_value_heads ({self.num_key_value_heads}) does not divide "
                    f"num_attention_heads ({self.num_attention_heads})"
                )
        elif self.num_key_value_heads <= 0:
            out.append(f"num_key_value_heads must be positive, got {self.num_key_value_heads}")
        if self.head_dim <= 0 or self.head_dim % 2:
            out.append(f"head_dim must be a positive even number, got {self.head_dim}")
        if self.layer_types and len(self.layer_types) != self.num_hidden_layers:
            out.append(f"layer_types lists {len(self.layer_types)} layers, num_hidden_layers is {self.num_hidden_layers}")
        return out

    @property
    def hidden_act_key(self) -> str:
        """The config.json key the family names its activation by (``hidden_act``; Gemma3 ``hidden_activation``)."""
        return self.family.activation_keys[0]

    # --- HF config.json -------------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], path: str | Path = "config.json") -> ModelConfig:
        try:
            family = detect_family_of(d)
            heads = whole(d, "num_attention_heads", MAX_DIM)
            hidden = whole(d, "hidden_size", MAX_DIM)
            head_dim = whole(d, "head_dim", MAX_DIM, family.default("head_dim"))
            if head_dim is None:
                if hidden % heads:
                    raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
                head_dim = hidden // heads
            layers = whole(d, "num_hidden_layers", MAX_LAYERS)
            theta, local_theta = rope_bases(d, family)
            layer_types, window = attention_layout(d, family, layers)
            qc = d.get("quantization_config")
            cfg = cls(
                family=family,
                hidden_size=hidden,
                intermediate_size=whole(d, "intermediate_size", MAX_DIM),
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=whole(d, "num_key_value_heads", MAX_DIM, heads),
                vocab_size=whole(d, "vocab_size", MAX_DIM),
                max_position_embeddings=whole(
                    d, "max_position_embeddings", 2**63 - 1, family.default("max_position_embeddings", 2048)
                ),
                rms_norm_eps=positive(d, "rms_norm_eps", 1e-6),
                rope_theta=theta,
                # The shipped configs state tying explicitly; absent, transformers' class default applies.
                tie_word_embeddings=flag(d, "tie_word_embeddings", family.tied_by_default),
                hidden_act=activation(d, family),
                head_dim=head_dim,
                bos_token_id=token_ids(d, "bos_token_id", MAX_DIM, single=True),
                eos_token_id=token_ids(d, "eos_token_id", MAX_DIM),
                quantization=QuantConfig.from_dict(qc) if isinstance(qc, dict) else None,
                layer_types=layer_types,
                sliding_window=window,
                rope_local_theta=local_theta if SLIDING_ATTENTION in layer_types else None,
                query_pre_attn_scalar=optional_float(positive(d, "query_pre_attn_scalar", family.default("query_pre_attn_scalar"))),
                bidirectional=flag(d, "use_bidirectional_attention", False),
                attn_logit_softcapping=positive(d, "attn_logit_softcapping", None),
                final_logit_softcapping=positive(d, "final_logit_softcapping", None),
                raw=copy.deepcopy(d),
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            missing = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CheckpointError(path, f"config is not a usable BitNet model config: {missing}") from None
        bad = cfg.problems()
        if bad:
            raise CheckpointError(path, "; ".join(bad))
        return cfg

    def to_hf_dict(self, quantization: QuantConfig | None, dtype_name: str) -> dict[str, Any]:
        """A config.json for transformers (``dtype_name``: the model's float dtype, ``"BF16"``); keys
        whose class default is wrong are written explicitly."""
        dtype = config_name(dtype_name)
        d = copy.deepcopy(self.raw)
        d.pop("quantization_config", None)
        d["architectures"] = [self.family.hf_architecture]
        d["model_type"] = self.family.model_type
        d.update(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            torch_dtype=dtype,
        )
        d[self.hidden_act_key] = self.hidden_act
        if "dtype" in d:  # transformers 5 names it so; keep both keys saying the same
            d["dtype"] = dtype
        write_rope_bases(d, self.rope_theta, self.rope_local_theta)
        if self.head_dim != self.hidden_size // self.num_attention_heads or "head_dim" in d:
            d["head_dim"] = self.head_dim
        if self.bos_token_id is not None:
            d["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            d["eos_token_id"] = self.eos_token_id
        if quantization is not None:
            d["quantization_config"] = quantization.to_dict()
        return d


def detect_family_of(d: dict[str, Any]) -> Family:
    archs = d.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ValueError(f"architectures must be a list of class names, got {archs!r:.80}")
    family = detect_family(archs, d.get("model_type"))
    if family is None:
        name = archs[0] if archs else d.get("model_type")
        raise CheckpointError("config.json", f"unsupported architecture {name!r:.80}")
    return family


def load_config_json(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse config.json like transformers does (last duplicate wins) and report duplicated keys."""
    duplicates: list[str] = []

    def keep_last(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                duplicates.append(k)
            out[k] = v
        return out

    d = parse_json_text(read_regular(path, "config"), path, "config", object_pairs_hook=keep_last)
    if not isinstance(d, dict):
        raise CheckpointError(path, "config is not a JSON object")
    return d, duplicates


def read_hf_config(path: Path) -> ModelConfig:
    d, dups = load_config_json(path)
    try:
        cfg = ModelConfig.from_hf_dict(d, path)
    except CheckpointError as exc:
        raise CheckpointError(path, exc.problem) from None
    cfg.duplicate_keys = dups
    return cfg
