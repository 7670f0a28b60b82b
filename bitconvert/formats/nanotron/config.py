"""The three Nanotron side files: ``model_config.json``, ``config.yaml``, ``checkpoint_metadata.json``.

``model_config.json`` carries the field set of ``LlamaBitNetConfig`` from Nanotron's BitNet pull
request (#180), the only Nanotron config class with a BitNet flag (``is_bitnet_config``); Nanotron
builds it with ``Cls(**json)``, so no other key may appear. What that class cannot say (RoPE base
and row order, the original vocabulary size, the Hugging Face config, exact ternary scales) goes
into ``checkpoint_metadata.json``'s free-form ``custom_metas`` under ``"bitconvert"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ...config import ModelConfig
from ...errors import CheckpointError, UsageError
from ...jsonfile import read_json_object
from ...scale_records import NANOTRON_SCALES_KEY, decode_records
from ...ternary import TernaryScale
from ..options import choice_parser, dtype_field, option, parse_flag

MODEL_CONFIG = "model_config.json"
CONFIG_YAML = "config.yaml"
CHECKPOINT_METADATA = "checkpoint_metadata.json"
OWN_FILES = (MODEL_CONFIG, CONFIG_YAML, CHECKPOINT_METADATA)
VERSIONS = ("1.4", "1.5")
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


def model_config_dict(cfg: ModelConfig, vocab_rows: int) -> dict[str, Any]:
    """PR #180's ``LlamaBitNetConfig`` fields, in its order, with values its strict parsers type-check."""
    raw = cfg.raw
    rope_scaling = raw.get("rope_scaling")
    pad = _first_int(raw.get("pad_token_id"), -1)
    return {
        "bos_token_id": _first_int(cfg.bos_token_id, NANOTRON_DEFAULTS["bos_token_id"]),
        "eos_token_id": _first_int(cfg.eos_token_id, NANOTRON_DEFAULTS["eos_token_id"]),
        "hidden_act": cfg.hidden_act,
        "hidden_size": cfg.hidden_size,
        "initializer_range": float(raw.get("initializer_range") or 0.02),
        "intermediate_size": cfg.intermediate_size,
        "is_bitnet_config": True,
        "max_position_embeddings": cfg.max_position_embeddings,
        "num_attention_heads": cfg.num_attention_heads,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_key_value_heads": cfg.num_key_value_heads,
        "pad_token_id": pad if pad >= 0 else None,
        "pretraining_tp": 1,
        "rms_norm_eps": float(cfg.rms_norm_eps),
        "rope_scaling": rope_scaling if isinstance(rope_scaling, dict) else None,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "use_cache": bool(raw.get("use_cache", True)),
        "vocab_size": vocab_rows,
    }


def config_yaml_text(model_config: dict[str, Any], tp: int, dtype: torch.dtype) -> str:
    """A minimal ``config.yaml`` for Nanotron's strict loader: only sections and fields common to 1.4 and 1.5.

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
            "dtype": str(dtype).removeprefix("torch."),
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


# --- exact ternary scales in custom_metas ----------------------------------------------------------


# --- options ------------------------------------------------------------------------------------


def _parse_tp(value: Any) -> int:
    try:
        tp = int(value) if not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        tp = 0
    if tp < 1 or str(tp) != str(value).strip():
        raise UsageError(f"--tp must be a positive integer, got {value!r}")
    return tp


@dataclass(frozen=True)
class NanotronOptions:
    tp: int = option(1, "--tp", "tensor-parallel size to write", _parse_tp)
    #: interleaved is what PR #180's model (and Nanotron before the flag existed) applies
    rope_interleaved: bool = option(True, "--rope-interleaved/--no-rope-interleaved", "RoPE row layout", parse_flag)
    nanotron_version: str = option("1.4", "--nanotron-version", "checkpoint version", choice_parser("--nanotron-version", VERSIONS))
    allow_approximate: bool = option(
        False, "--allow-approximate", "accept a conversion that cannot be exact (packed -> Nanotron)", parse_flag
    )
    dtype: torch.dtype | None = dtype_field("dtype of the written parameters: bf16, f16 or f32; default bf16")


# --- reading ------------------------------------------------------------------------------------


@dataclass
class NanotronMeta:
    """What the side files of a Nanotron checkpoint say, validated."""

    config: ModelConfig
    vocab_rows: int  # rows of embedding / lm_head on disk (padded)
    rope_interleaved: bool
    tp: int | None  # from checkpoint_metadata.json, when present
    version: str | None
    scales: dict[str, tuple[TernaryScale, torch.Tensor]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _int_field(d: dict[str, Any], key: str, path: Path, default: int | None = None) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise CheckpointError(path, f"{key} must be a positive integer, got {v!r}")
    return v


def _hf_dict_from_nanotron(mc: dict[str, Any], sub_norms: bool) -> dict[str, Any]:
    """An HF config for a Nanotron model that recorded none: architecture from the sub-norms and activation."""
    act = str(mc.get("hidden_act", NANOTRON_DEFAULTS["hidden_act"]))
    if not sub_norms:
        arch, model_type = "LlamaForCausalLM", "llama"
    elif act == "relu2":
        arch, model_type = "BitNetForCausalLM", "bitnet"
    else:
        arch, model_type = "BitnetForCausalLM", "llama"
    d = {k: mc[k] for k in _REQUIRED}
    d.update(
        architectures=[arch],
        model_type=model_type,
        hidden_act=act,
        num_key_value_heads=mc.get("num_key_value_heads") or mc["num_attention_heads"],
        **{k: mc.get(k, NANOTRON_DEFAULTS[k]) for k in ("bos_token_id", "eos_token_id", "max_position_embeddings",
                                                        "rms_norm_eps", "rope_theta", "tie_word_embeddings")},
        quantization_config={"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
    )
    return d


def read_meta(path: Path, sub_norms: bool) -> NanotronMeta:
    """Parse model_config.json (and checkpoint_metadata.json when present) into the canonical config."""
    mc_path = path / MODEL_CONFIG
    mc = read_json_object(mc_path)
    notes: list[str] = []
    for key in _REQUIRED:
        _int_field(mc, key, mc_path)
    if not mc.get("is_bitnet_config"):
        if not mc.get("is_llama_config"):
            raise CheckpointError(mc_path, "names no Llama-family model (neither is_bitnet_config nor is_llama_config)")
        notes.append("model_config.json is a plain Llama config (no is_bitnet_config); linears read as BitNet latents")

    meta_path = path / CHECKPOINT_METADATA
    tp = version = None
    custom: dict[str, Any] = {}
    if meta_path.is_file():
        meta = read_json_object(meta_path)
        tp = _int_field(meta, "tp", meta_path)
        version = str(meta.get("version")) if meta.get("version") is not None else None
        cm = meta.get("custom_metas") or {}
        if isinstance(cm, dict) and isinstance(cm.get(CUSTOM_KEY), dict):
            custom = cm[CUSTOM_KEY]
    else:
        notes.append(f"no {CHECKPOINT_METADATA}: tensor-parallel size taken from the shard file names")

    hf = custom.get("hf_config")
    if isinstance(hf, dict):
        config = ModelConfig.from_hf_dict(hf, meta_path)
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
        if bool(mc.get("tie_word_embeddings", False)) != config.tie_word_embeddings:
            raise CheckpointError(mc_path, "tie_word_embeddings disagrees with the recorded Hugging Face config")
    else:
        config = ModelConfig.from_hf_dict(_hf_dict_from_nanotron(mc, sub_norms), mc_path)
        # Nanotron rewrites checkpoint_metadata.json without custom_metas whenever it saves.
        notes.append(
            f"no bitconvert record in {CHECKPOINT_METADATA}: Hugging Face config rebuilt from model_config.json "
            f"({config.architecture.value}, rope_theta {config.rope_theta:g})"
        )

    vocab_rows = mc["vocab_size"]
    if vocab_rows < config.vocab_size:
        raise CheckpointError(mc_path, f"vocab_size {vocab_rows} is below the model's vocabulary ({config.vocab_size})")
    if "rope_interleaved" in custom:
        rope = bool(custom["rope_interleaved"])
    elif "rope_interleaved" in mc:
        rope = bool(mc["rope_interleaved"])
    else:
        rope = True
        notes.append("RoPE row order not recorded: read as interleaved, what Nanotron's BitNet model applies")
    scales = {}
    raw_scales = custom.get(NANOTRON_SCALES_KEY)
    if raw_scales is not None:
        for name, record in decode_records(raw_scales, path / CHECKPOINT_METADATA).items():
            if record.written is None:
                raise CheckpointError(path / CHECKPOINT_METADATA, "scale record without the written value", name)
            scales[name] = (record.scale, record.written)
    return NanotronMeta(config, vocab_rows, rope, tp, version, scales, notes)
