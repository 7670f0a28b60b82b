"""Model hyperparameters <-> GGUF metadata, and which GGUF architecture each BitNet layout becomes.

llama.cpp's ``bitnet`` architecture serves both sub-norm layouts (2B-4T and 1bitLLM); bitnet.cpp's
I2_S files of 2B-4T use ``bitnet-b1.58`` (older files ``bitnet-25``). Llama-layout packed models
(HF1BitLLM, Falcon3 1.58-bit) are plain ``llama``. The FFN activation is written as
``{arch}.hidden_activation`` so a reader can tell relu² (2B-4T) from SiLU (1bitLLM) apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ... import __version__
from ...config import ARCH_SPECS, Architecture, ModelConfig
from ...errors import CheckpointError
from ...scale_records import SCALES_KEY, encode_records
from .parser import GGUFFile
from .stream_writer import KV, kv_f32, kv_str, kv_u32

ARCH_BITNET = "bitnet"
ARCH_BITNET_B158 = "bitnet-b1.58"
ARCH_BITNET_25 = "bitnet-25"
ARCH_LLAMA = "llama"
READABLE_ARCHS = (ARCH_BITNET, ARCH_BITNET_B158, ARCH_BITNET_25, ARCH_LLAMA)

#: bitconvert's own keys: exact provenance a later conversion can use
KEY_HF_CONFIG = "bitconvert.hf_config"
KEY_SOURCE_FORMAT = "bitconvert.source_format"
KEY_SCALE_MODE = "bitconvert.scale_mode"

HUB_URL = "https://huggingface.co/"

# llama_ftype values written as general.file_type
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "tq1_0": 36, "tq2_0": 37, "i2_s": 40}


def gguf_architecture(arch: Architecture, gguf_type: str) -> str:
    if arch is Architecture.LLAMA:
        return ARCH_LLAMA
    if gguf_type == "i2_s" and arch is Architecture.BITNET:
        return ARCH_BITNET_B158  # what bitnet.cpp's ggml-model-i2_s.gguf declares (relu² built in)
    return ARCH_BITNET


def hyperparameters(cfg: ModelConfig, arch: str) -> dict[str, KV]:
    """Every key llama.cpp's loader reads for ``arch``, plus the FFN activation."""
    return {
        f"{arch}.vocab_size": kv_u32(cfg.vocab_size),
        f"{arch}.context_length": kv_u32(cfg.max_position_embeddings),
        f"{arch}.embedding_length": kv_u32(cfg.hidden_size),
        f"{arch}.block_count": kv_u32(cfg.num_hidden_layers),
        f"{arch}.feed_forward_length": kv_u32(cfg.intermediate_size),
        f"{arch}.attention.head_count": kv_u32(cfg.num_attention_heads),
        f"{arch}.attention.head_count_kv": kv_u32(cfg.num_key_value_heads),
        f"{arch}.attention.key_length": kv_u32(cfg.head_dim),
        f"{arch}.attention.value_length": kv_u32(cfg.head_dim),
        f"{arch}.attention.layer_norm_rms_epsilon": kv_f32(cfg.rms_norm_eps),
        f"{arch}.rope.freq_base": kv_f32(cfg.rope_theta),
        f"{arch}.rope.dimension_count": kv_u32(cfg.head_dim),
        f"{arch}.hidden_activation": kv_str(cfg.hidden_act),
    }


def general(
    name: str, arch: str, file_type: int, source_url: str | None = None, license: str | None = None
) -> dict[str, KV]:
    md = {
        "general.architecture": kv_str(arch),
        "general.type": kv_str("model"),
        "general.name": kv_str(name),
        "general.quantized_by": kv_str(f"bitconvert {__version__}"),
        "general.file_type": kv_u32(file_type),
        "general.quantization_version": kv_u32(2),
    }
    if source_url:
        md["general.source.url"] = kv_str(source_url)
        if source_url.startswith(HUB_URL):
            md["general.source.repo_url"] = kv_str(source_url)
    if license:
        md["general.license"] = kv_str(license)
    return md


def origin(info: dict[str, Any], path: Path) -> tuple[str, str | None, str | None]:
    """(general.name, general.source.url, general.license) for a checkpoint's ``info`` and ``path``.

    A Hub source names the model and its URL; a GGUF source passes on its own; otherwise the name
    is the file's stem or the directory's name (never a Hub cache's commit-hash folder).
    """
    repo = info.get("source_repo")
    url = f"{HUB_URL}{repo}" if repo else info.get("source_url")
    name = info.get("model_name") or (path.stem if path.suffix == ".gguf" else path.name)
    return name, url, info.get("license")


def source_config(cfg: ModelConfig) -> dict[str, Any]:
    """The source's config.json as it was read (its dtype included), for ``bitconvert.hf_config``."""
    return cfg.raw if cfg.raw else cfg.to_hf_dict(cfg.quantization, "bfloat16")


def bitconvert_keys(cfg: ModelConfig, source_format: str, scale_mode: str, scales: dict[str, Any]) -> dict[str, KV]:
    md = {
        KEY_SOURCE_FORMAT: kv_str(source_format),
        KEY_SCALE_MODE: kv_str(scale_mode),
        KEY_HF_CONFIG: kv_str(json.dumps(source_config(cfg), separators=(",", ":"))),
    }
    if scales:
        md[SCALES_KEY] = kv_str(encode_records(scales))
    return md


# --- reading ----------------------------------------------------------------------------------


def _int(f: GGUFFile, key: str, default: int | None = None) -> int:
    v = f.get(key, default)
    if v is None:
        raise CheckpointError(f.path, f"metadata key {key} is missing")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise CheckpointError(f.path, f"metadata key {key} is not a number: {v!r}") from None


def source_architecture(f: GGUFFile) -> tuple[str, Architecture]:
    arch = f.get("general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f.path, "metadata key general.architecture is missing")
    if arch not in READABLE_ARCHS:
        raise CheckpointError(f.path, f"GGUF architecture {arch!r} is not a BitNet model bitconvert reads")
    act = f.get(f"{arch}.hidden_activation")
    if arch == ARCH_LLAMA:
        return arch, Architecture.LLAMA
    if arch == ARCH_BITNET:
        # llama.cpp's own converter writes no activation for 1bitLLM models (SiLU).
        return arch, Architecture.BITNET if act == "relu2" else Architecture.BITNET_1BITLLM
    # bitnet.cpp's bitnet-b1.58 / bitnet-25 graphs apply relu² (the 2B-4T model).
    return arch, Architecture.BITNET_1BITLLM if act == "silu" else Architecture.BITNET


def _token_id(f: GGUFFile, key: str) -> int | None:
    v = f.get(key)
    return int(v) if isinstance(v, int) else None


def derived_hf_config(f: GGUFFile, arch: str, kind: Architecture, tied: bool) -> dict[str, Any]:
    """An HF config.json dict rebuilt from the GGUF hyperparameters alone."""
    spec = ARCH_SPECS[kind]
    hidden = _int(f, f"{arch}.embedding_length")
    heads = _int(f, f"{arch}.attention.head_count")
    tokens = f.get("tokenizer.ggml.tokens")
    vocab = _int(f, f"{arch}.vocab_size", len(tokens) if isinstance(tokens, list) else None)
    d: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
        "hidden_size": hidden,
        "intermediate_size": _int(f, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _int(f, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(f, f"{arch}.attention.head_count_kv", heads),
        "vocab_size": vocab,
        "max_position_embeddings": _int(f, f"{arch}.context_length", 2048),
        "rms_norm_eps": float(f.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(f.get(f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "hidden_act": f.get(f"{arch}.hidden_activation") or spec.hidden_act,
        "head_dim": _int(f, f"{arch}.attention.key_length", _int(f, f"{arch}.rope.dimension_count", hidden // heads)),
    }
    for key, hf in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")):
        tid = _token_id(f, key)
        if tid is not None:
            d[hf] = tid
    return d


_COMPARED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "head_dim", "tie_word_embeddings",
)  # fmt: skip


def read_config(f: GGUFFile, tied: bool, notes: list[str]) -> tuple[str, ModelConfig]:
    """The model config: bitconvert's recorded config.json when it agrees with the GGUF keys, else derived."""
    arch, kind = source_architecture(f)
    derived = ModelConfig.from_hf_dict(derived_hf_config(f, arch, kind, tied), f.path)
    recorded = f.get(KEY_HF_CONFIG)
    if isinstance(recorded, str):
        try:
            cfg = ModelConfig.from_hf_dict(json.loads(recorded), f.path)
        except (ValueError, CheckpointError) as exc:
            notes.append(f"ignored unreadable {KEY_HF_CONFIG}: {exc}")
        else:
            differ = [k for k in _COMPARED if getattr(cfg, k) != getattr(derived, k)]
            if cfg.architecture is derived.architecture and not differ:
                return arch, cfg
            what = ", ".join(differ) or "architecture"
            notes.append(f"ignored {KEY_HF_CONFIG}: it disagrees with the GGUF metadata on {what}")
    return arch, derived
