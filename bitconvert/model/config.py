"""Model configuration: dimensions, tying, RoPE, quantization config; tensor names from the family; config.json I/O."""

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
from .families import EMBEDDING, FINAL_NORM, LM_HEAD, Family, detect_family

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
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
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

    def quantized_linear_names(self) -> list[str]:
        names = [
            f"model.layers.{i}.{lin.path}.weight" for i in range(self.num_hidden_layers) for lin in self.family.linears
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
        shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (d["vocab"], d["hidden"])}
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}."
            for path, dims in self.family.layer_tensors():
                shapes[p + path + ".weight"] = tuple(d[x] for x in dims)
        shapes[FINAL_NORM] = (d["hidden"],)
        if not self.tie_word_embeddings:
            shapes[LM_HEAD] = (d["vocab"], d["hidden"])
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
        return out

    # --- HF config.json -------------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], path: str | Path = "config.json") -> "ModelConfig":
        try:
            family = detect_family_of(d)
            heads = whole(d, "num_attention_heads", MAX_DIM)
            hidden = whole(d, "hidden_size", MAX_DIM)
            head_dim = whole(d, "head_dim", MAX_DIM, None)
            if head_dim is None:
                if hidden % heads:
                    raise ValueError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
                head_dim = hidden // heads
            rope = d.get("rope_parameters") or {}
            if not isinstance(rope, dict):
                raise ValueError(f"rope_parameters must be an object, got {rope!r:.80}")
            qc = d.get("quantization_config")
            cfg = cls(
                family=family,
                hidden_size=hidden,
                intermediate_size=whole(d, "intermediate_size", MAX_DIM),
                num_hidden_layers=whole(d, "num_hidden_layers", MAX_LAYERS),
                num_attention_heads=heads,
                num_key_value_heads=whole(d, "num_key_value_heads", MAX_DIM, heads),
                vocab_size=whole(d, "vocab_size", MAX_DIM),
                max_position_embeddings=whole(d, "max_position_embeddings", 2**63 - 1, 2048),
                rms_norm_eps=positive(d, "rms_norm_eps", 1e-6),
                rope_theta=positive(d, "rope_theta", None) or positive(rope, "rope_theta", 10000.0),
                # The shipped configs state tying explicitly; absent, transformers' class default applies.
                tie_word_embeddings=flag(d, "tie_word_embeddings", family.tied_by_default),
                hidden_act=text(d, "hidden_act", family.hidden_act),
                head_dim=head_dim,
                bos_token_id=token_ids(d, "bos_token_id", MAX_DIM, single=True),
                eos_token_id=token_ids(d, "eos_token_id", MAX_DIM),
                quantization=QuantConfig.from_dict(qc) if isinstance(qc, dict) else None,
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
            hidden_act=self.hidden_act,
            torch_dtype=dtype,
        )
        if "dtype" in d:  # transformers 5 names it so; keep both keys saying the same
            d["dtype"] = dtype
        if "rope_parameters" in d and isinstance(d["rope_parameters"], dict):
            d["rope_parameters"]["rope_theta"] = self.rope_theta
        else:
            d["rope_theta"] = self.rope_theta
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
