"""The three Nanotron side files: ``model_config.json``, ``config.yaml``, ``checkpoint_metadata.json``.

``model_config.json`` carries exactly the field set of the flavor's config class: PR #180's
``LlamaBitNetConfig`` (``is_bitnet_config``) or main's ``LlamaConfig`` (``is_llama_config``, with
``rope_theta`` and ``rope_interleaved``); Nanotron builds it with ``Cls(**json)`` and matches
``config.yaml`` strictly, so no other key may appear. What the class cannot say (the original
vocabulary size, the Hugging Face config, exact ternary scales, what a lossy conversion gave up)
goes into ``checkpoint_metadata.json``'s free-form ``custom_metas`` under ``"bitconvert"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...dtypes import config_name
from ...errors import CheckpointError
from ...io.jsonfile import read_json_object
from ...io.values import flag
from ...model.config import ModelConfig
from ...model.families import FAMILIES, Family
from ...ternary.records import NANOTRON_SCALES_KEY, ScaleRecord, decode_records
from .flavors import NANOTRON_ROPE_THETA, Flavor
from .layout import padded_vocab
from .options import VERSIONS, NanotronOptions  # noqa: F401 (the writer's options, declared apart for the CLI)

MODEL_CONFIG = "model_config.json"
CONFIG_YAML = "config.yaml"
CHECKPOINT_METADATA = "checkpoint_metadata.json"
#: tensors the flavor's model has no parameter for (written only with --allow-lossy); Nanotron never reads it
KEPT_FILE = "bitconvert_kept.safetensors"
OWN_FILES = (MODEL_CONFIG, CONFIG_YAML, CHECKPOINT_METADATA, KEPT_FILE)
CUSTOM_KEY = "bitconvert"
#: Nanotron's dataclass defaults, for model_config.json files that leave a field out.
NANOTRON_DEFAULTS = {
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}
_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")


def _first_int(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


def model_config_dict(cfg: ModelConfig, vocab_rows: int, flavor: Flavor, rope_interleaved: bool) -> dict[str, Any]:
    """The flavor's config class's fields, in its order, with values its strict parsers type-check."""
    raw = cfg.raw
    rope_scaling = raw.get("rope_scaling")
    pad = _first_int(raw.get("pad_token_id"), -1)
    d: dict[str, Any] = {
        "bos_token_id": _first_int(cfg.bos_token_id, NANOTRON_DEFAULTS["bos_token_id"]),
        "eos_token_id": _first_int(cfg.eos_token_id, NANOTRON_DEFAULTS["eos_token_id"]),
        "hidden_act": cfg.hidden_act,
        "hidden_size": cfg.hidden_size,
        "initializer_range": float(raw.get("initializer_range") or 0.02),
        "intermediate_size": cfg.intermediate_size,
        ("is_bitnet_config" if flavor.bitnet else "is_llama_config"): True,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
    }
    if flavor.rope_in_config:  # main's LlamaConfig, in its field order
        d["attention_bias"] = False
    d.update(
        num_key_value_heads=cfg.num_key_value_heads,
        pad_token_id=pad if pad >= 0 else None,
        pretraining_tp=1,
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope_scaling=rope_scaling if isinstance(rope_scaling, dict) else None,
    )
    if flavor.rope_in_config:
        d.update(rope_theta=float(cfg.rope_theta), rope_interleaved=rope_interleaved)
    d.update(tie_word_embeddings=cfg.tie_word_embeddings, use_cache=_flag(raw, "use_cache", "config.json", True), vocab_size=vocab_rows)
    return d


def config_yaml_text(model_config: dict[str, Any], tp: int, dtype_name: str) -> str:
    """A minimal ``config.yaml`` for Nanotron's strict loader: only sections and fields all three flavors take.

    Training sections (tokens, optimizer, data_stages, checkpoints) are the user's to add.
    """
    doc = {
        "general": {"project": "bitconvert", "seed": 42},
        "parallelism": {
            "dp": 1,
            "pp": 1,
            "tp": tp,
            "pp_engine": "1f1b",
            "tp_mode": "ALL_REDUCE",
            "tp_linear_async_communication": False,
        },
        "model": {
            "model_config": model_config,
            "init_method": {"std": model_config["initializer_range"]},
            "dtype": config_name(dtype_name),
            "make_vocab_size_divisible_by": 1,
            "ddp_bucket_cap_mb": 25,
        },
        # Required (no default) in 1.4; every field of it is optional.
        "tokenizer": {"tokenizer_name_or_path": None},
    }
    return yaml.safe_dump(doc, sort_keys=True)


def checkpoint_metadata_dict(version: str, tp: int, custom: dict[str, Any], sequence_length: int) -> dict[str, Any]:
    """A fresh, untrained run's metadata in the shape each checkpoint version's loader expects."""
    stage: dict[str, Any] = {"name": "Stable Training Stage", "start_training_step": 1, "consumed_train_samples": 0}
    metas: dict[str, Any] = {
        "consumed_train_samples": 0,
        "last_train_step": 0,
        "last_stage_idx": 0,
        "data_stages": [stage],
    }
    out: dict[str, Any] = {"version": version, "tp": tp, "dp": 1, "metas": metas, "custom_metas": {CUSTOM_KEY: custom}}
    if version == "1.5":
        stage.update(sequence_length=sequence_length, consumed_tokens_per_dataset_folder={})
        metas["consumed_tokens_total"] = 0
        out["cp"] = 1
    return out


def dump_json(path: Path, data: dict[str, Any], *, sort_keys: bool) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n", encoding="utf-8")


# --- reading ------------------------------------------------------------------------------------


@dataclass
class NanotronMeta:
    """What the side files of a Nanotron checkpoint say, validated."""

    config: ModelConfig
    vocab_rows: int  # rows of embedding / lm_head on disk (padded)
    rope_interleaved: bool
    tp: int | None  # from checkpoint_metadata.json, when present
    version: str | None
    #: model_config.json is the PRs' LlamaBitNetConfig (``is_bitnet_config``), not a plain LlamaConfig
    bitnet_config: bool
    #: bitconvert's scale records (each with the magnitude written), as bytes until a tensor is loaded
    scales: dict[str, ScaleRecord] = field(default_factory=dict)
    #: bitconvert's record (custom_metas.bitconvert), empty for a checkpoint Nanotron saved
    record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the checkpoint evidently lost part of a model
    warnings: list[str] = field(default_factory=list)


def _flag(d: dict[str, Any], key: str, path: Path | str, default: bool | None = None) -> bool | None:
    """``d[key]`` as a JSON boolean (``"false"`` is not false); a CheckpointError naming ``path`` otherwise."""
    try:
        return flag(d, key, default)
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None


def _int_field(d: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CheckpointError(path, f"{key} must be a positive integer, got {v!r}")
    return v


def has_sub_norms(family: Family) -> bool:
    return family.norm("attn_sub_norm") is not None or family.norm("ffn_sub_norm") is not None


def family_from_files(sub_norms: bool, act: str) -> Family:
    """The family of a Nanotron model that recorded none, asked of the family records: the first one
    whose sub-norms are there exactly when the files hold sub-norm folders, preferring one Nanotron
    can hold and then one whose activation is ``act``."""
    return max(
        FAMILIES.values(),
        key=lambda f: (has_sub_norms(f) == sub_norms, f.nanotron, f.hidden_act == act),
    )  # max keeps the first of equals: registration order breaks ties


def _hf_dict_from_nanotron(mc: dict[str, Any], sub_norms: bool) -> dict[str, Any]:
    """An HF config for a Nanotron model that recorded none: family from the sub-norms and activation."""
    act = str(mc.get("hidden_act", NANOTRON_DEFAULTS["hidden_act"]))
    family = family_from_files(sub_norms, act)
    d = {k: mc[k] for k in _REQUIRED}
    d.update(
        architectures=[family.hf_architecture],
        model_type=family.model_type,
        hidden_act=act,
        num_key_value_heads=mc.get("num_key_value_heads") or mc["num_attention_heads"],
        **{k: mc.get(k, NANOTRON_DEFAULTS[k]) for k in ("bos_token_id", "eos_token_id", "max_position_embeddings",
                                                        "rms_norm_eps", "rope_theta", "tie_word_embeddings")},
        quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
    )
    return d


def _read_record(path: Path, notes: list[str]) -> tuple[int | None, str | None, dict[str, Any]]:
    """``checkpoint_metadata.json``: its tp, version and bitconvert's record (empty when Nanotron saved it)."""
    meta_path = path / CHECKPOINT_METADATA
    if not meta_path.is_file():
        notes.append(f"no {CHECKPOINT_METADATA}: tensor-parallel size taken from the shard file names")
        return None, None, {}
    meta = read_json_object(meta_path)
    tp = _int_field(meta, "tp", meta_path)
    version = str(meta.get("version")) if meta.get("version") is not None else None
    cm = meta.get("custom_metas") or {}
    custom = cm[CUSTOM_KEY] if isinstance(cm, dict) and isinstance(cm.get(CUSTOM_KEY), dict) else {}
    return tp, version, custom


def _check_against_record(mc: dict[str, Any], config: ModelConfig, mc_path: Path) -> None:
    heads = mc.get("num_key_value_heads") or mc["num_attention_heads"]
    for key, value in (
        ("hidden_size", config.hidden_size),
        ("intermediate_size", config.intermediate_size),
        ("num_hidden_layers", config.num_hidden_layers),
        ("num_attention_heads", config.num_attention_heads),
        ("num_key_value_heads", config.num_key_value_heads),
    ):
        have = heads if key == "num_key_value_heads" else mc[key]
        if have != value:
            raise CheckpointError(mc_path, f"{key} is {have}, but the recorded Hugging Face config says {value}")
    if _flag(mc, "tie_word_embeddings", mc_path, False) != config.tie_word_embeddings:
        raise CheckpointError(mc_path, "tie_word_embeddings disagrees with the recorded Hugging Face config")


def _rebuilt_config(mc: dict, custom: dict, sub_norms: bool, mc_path: Path, notes: list, warnings: list) -> ModelConfig:
    """The HF config from model_config.json alone (plus what survives of a record), and what it evidently lost."""
    d = _hf_dict_from_nanotron(mc, sub_norms)
    for key in ("vocab_size", "rope_theta"):  # the record's, where the files kept it while the model lost parts
        if key in custom:
            d[key] = custom[key]
    config = ModelConfig.from_hf_dict(d, mc_path)
    if not custom:  # Nanotron rewrites checkpoint_metadata.json without custom_metas whenever it saves
        notes.append(
            f"no bitconvert record in {CHECKPOINT_METADATA}: Hugging Face config rebuilt from model_config.json "
            f"({config.family.key}, rope_theta {config.rope_theta:g})"
        )
        if "rope_theta" not in mc:
            warnings.append(
                f"rope_theta is absent from {MODEL_CONFIG} and no record says it: read as Nanotron's "
                f"{NANOTRON_ROPE_THETA:g} (2B-4T-style models use 500000); set it in config.json if it was not"
            )
    lost = _lost_sub_norms_family(config)
    if lost is not None:
        warnings.append(
            f"{config.hidden_act} without the attention/FFN sub-norms: evidently a {lost.hf_architecture}-style model "
            f"that lost its sub-norms in Nanotron; read as {config.family.hf_architecture} with {config.hidden_act}"
        )
    return config


def _lost_sub_norms_family(config: ModelConfig) -> Family | None:
    """A family with sub-norms that the activation points to, where the model read has none (and its
    own family does not compute that activation by default): what the model evidently was."""
    if has_sub_norms(config.family) or config.family.hidden_act == config.hidden_act:
        return None
    return next((f for f in FAMILIES.values() if has_sub_norms(f) and f.hidden_act == config.hidden_act), None)


def _recorded_config(
    path: Path, mc: dict, custom: dict, sub_norm_folders: bool, kept: set[str], warnings: list
) -> ModelConfig | None:
    """The Hugging Face config bitconvert recorded, while the checkpoint still holds all of its tensors."""
    hf = custom.get("hf_config")
    if not isinstance(hf, dict):
        return None
    config = ModelConfig.from_hf_dict(hf, path / CHECKPOINT_METADATA)
    _check_against_record(mc, config, path / MODEL_CONFIG)
    sub_norm = config.family.norm("attn_sub_norm") or config.family.norm("ffn_sub_norm")
    if sub_norm and not sub_norm_folders and f"{config.layer_prefix(0)}{sub_norm.path}.weight" not in kept:
        warnings.append(
            f"the recorded {config.family.key} model's sub-norms are not in this checkpoint "
            "(no Nanotron model has them)"
        )
        return None
    return config


def _trim_padded_vocab(path: Path, config: ModelConfig, tp: int, warnings: list) -> None:
    """A Nanotron save pads the vocabulary to a multiple of the TP size and keeps no record of the
    original: where the checkpoint's tokenizer.json holds fewer tokens and the rows are exactly that
    padding, the model is read with the tokenizer's vocabulary (the padding rows are dropped), saying so."""
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        return
    try:
        tok = read_json_object(tokenizer, "tokenizer")
    except CheckpointError:
        return  # the side-file checks report it
    model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
    ids = set(model.get("vocab", {}).values()) if isinstance(model.get("vocab"), dict) else set()
    ids |= {a.get("id") for a in tok.get("added_tokens") or [] if isinstance(a, dict)}
    n = max((i for i in ids if isinstance(i, int) and not isinstance(i, bool)), default=-1) + 1
    if 0 < n < config.vocab_size and padded_vocab(n, tp) == config.vocab_size:
        warnings.append(
            f"vocab_size {config.vocab_size} is Nanotron's padding of the tokenizer's {n} tokens to a multiple of "
            f"tp={tp}: read with {n} (the {config.vocab_size - n} padding row(s) of the embedding and head dropped)"
        )
        config.vocab_size = n


def _rope_order(mc: dict, custom: dict, bitnet_config: bool, notes: list) -> bool:
    if "rope_interleaved" in custom:
        return _flag(custom, "rope_interleaved", CHECKPOINT_METADATA)
    if "rope_interleaved" in mc:
        return _flag(mc, "rope_interleaved", MODEL_CONFIG)
    if not bitnet_config:  # the PRs' BitNet model interleaves, always
        notes.append("RoPE row order not recorded: read as interleaved, what Nanotron applied before rope_interleaved")
    return True


def _recorded_scales(path: Path, custom: dict) -> dict[str, ScaleRecord]:
    raw = custom.get(NANOTRON_SCALES_KEY)
    if raw is None:
        return {}
    scales = {}
    for name, record in decode_records(raw, path / CHECKPOINT_METADATA).items():
        if record.written is None:
            raise CheckpointError(path / CHECKPOINT_METADATA, "scale record without the written value", name)
        scales[name] = record
    return scales


def read_meta(path: Path, sub_norm_folders: bool, kept: set[str]) -> NanotronMeta:
    """Parse model_config.json and checkpoint_metadata.json into the canonical config.

    ``sub_norm_folders``: the weights hold sub-norm folders; ``kept``: tensor names in bitconvert's kept file.
    """
    mc_path = path / MODEL_CONFIG
    mc = read_json_object(mc_path)
    for key in _REQUIRED:
        _int_field(mc, key, mc_path)
    if not _flag(mc, "is_bitnet_config", mc_path, False) and not _flag(mc, "is_llama_config", mc_path, False):
        raise CheckpointError(mc_path, "names no Llama-family model (neither is_bitnet_config nor is_llama_config)")
    notes: list[str] = []
    warnings: list[str] = []
    tp, version, custom = _read_record(path, notes)
    bitnet_config = bool(_flag(mc, "is_bitnet_config", mc_path, False))
    if not bitnet_config and custom.get("flavor") != "main":
        notes.append("model_config.json is a plain Llama config (no is_bitnet_config); linears read as BitNet latents")
    config = _recorded_config(path, mc, custom, sub_norm_folders, kept, warnings)
    if config is None:
        config = _rebuilt_config(mc, custom, sub_norm_folders, mc_path, notes, warnings)
    if mc["vocab_size"] < config.vocab_size:
        raise CheckpointError(mc_path, f"vocab_size {mc['vocab_size']} is below the model's vocabulary ({config.vocab_size})")
    if not custom:
        _trim_padded_vocab(path, config, tp or 1, warnings)
    rope = _rope_order(mc, custom, bitnet_config, notes)
    lost = custom.get("lost")
    if lost:
        listed = "; ".join(map(str, lost)) if isinstance(lost, list) else str(lost)
        notes.append(f"written with --allow-lossy for {custom.get('flavor', 'Nanotron')}, whose model lacks: {listed}")
    scales = _recorded_scales(path, custom)
    return NanotronMeta(config, mc["vocab_size"], rope, tp, version, bitnet_config, scales, custom, notes, warnings)
