"""Model hyperparameters <-> GGUF metadata: the keys llama.cpp reads, bitconvert's own, and the
config rebuilt from them when a GGUF is read.

The FFN activation is written as ``{arch}.hidden_activation`` so a reader can tell relu² (2B-4T)
from SiLU (1bitLLM) apart; which GGUF architecture a family is written under, and which family a
file's architecture stands for, is :mod:`.archs`'.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_VERSION, Keys, PoolingType

from ... import __version__
from ...errors import CheckpointError
from ...io.jsonfile import parse_json_text
from ...model.checkpoint import Checkpoint, Origin
from ...model.config import ModelConfig
from ...model.config_keys import FULL_ATTENTION
from ...model.families import EMBEDDING_TASK, Family
from ...model.sentence_transformers import (
    TOP_LEVEL_FILES,
    is_sentence_transformers_file,
    module_folder,
    read_embedding_setup,
)
from ...ternary.records import SCALES_KEY, encode_records
from . import archs
from .parser import FLOAT32, GGUFFile
from .stream_writer import KV, kv_f32, kv_str, kv_u32

#: bitconvert's own keys: exact provenance a later conversion can use
KEY_HF_CONFIG = "bitconvert.hf_config"
KEY_SOURCE_FORMAT = "bitconvert.source_format"
KEY_SCALE_MODE = "bitconvert.scale_mode"
#: the I2_S byte layout written (see i2s_layouts.py); files without it are read as x86
KEY_I2S_LAYOUT = "bitconvert.i2s_layout"
#: the sentence-transformers side files verbatim (JSON: relative name -> text), restored on reading
KEY_SIDE_FILES = "bitconvert.side_files"
#: a side file recorded verbatim at most this long (real ones are a few hundred bytes)
MAX_RECORDED_SIDE_FILE = 1 << 20
#: GGUF's pooling types by sentence-transformers' pooling mode (llama.cpp has no max or weighted mean)
POOLING_TYPES = {"mean_tokens": PoolingType.MEAN, "cls_token": PoolingType.CLS, "lasttoken": PoolingType.LAST}

HUB_URL = "https://huggingface.co/"
#: bitconvert's FFN activation key (gguf-py names none): ``relu2`` (2B-4T) or ``silu`` (1bitLLM)
HIDDEN_ACTIVATION = "{arch}.hidden_activation"
_LLM, _ATTN, _ROPE, _GEN, _TOK = Keys.LLM, Keys.Attention, Keys.Rope, Keys.General, Keys.Tokenizer


def hyperparameters(cfg: ModelConfig, arch: str) -> dict[str, KV]:
    """Every key llama.cpp's loader reads for ``arch``, plus the FFN activation."""
    md = {
        _LLM.VOCAB_SIZE: kv_u32(cfg.vocab_size),
        _LLM.CONTEXT_LENGTH: kv_u32(cfg.max_position_embeddings),
        _LLM.EMBEDDING_LENGTH: kv_u32(cfg.hidden_size),
        _LLM.BLOCK_COUNT: kv_u32(cfg.num_hidden_layers),
        _LLM.FEED_FORWARD_LENGTH: kv_u32(cfg.intermediate_size),
        _ATTN.HEAD_COUNT: kv_u32(cfg.num_attention_heads),
        _ATTN.HEAD_COUNT_KV: kv_u32(cfg.num_key_value_heads),
        _ATTN.KEY_LENGTH: kv_u32(cfg.head_dim),
        _ATTN.VALUE_LENGTH: kv_u32(cfg.head_dim),
        _ATTN.LAYERNORM_RMS_EPS: kv_f32(cfg.rms_norm_eps),
        _ROPE.FREQ_BASE: kv_f32(cfg.rope_theta),
        _ROPE.DIMENSION_COUNT: kv_u32(cfg.head_dim),
        HIDDEN_ACTIVATION: kv_str(cfg.hidden_act),
    }
    if cfg.sliding_window is not None:  # llama.cpp applies it on the layers its graph makes sliding
        md[_ATTN.SLIDING_WINDOW] = kv_u32(cfg.sliding_window)
    if cfg.rope_local_theta is not None:
        md[_ROPE.FREQ_BASE_SWA] = kv_f32(cfg.rope_local_theta)
    return {key.format(arch=arch): value for key, value in md.items()}


def embedding_keys(ckpt: Checkpoint, arch: str, warnings: list[str]) -> dict[str, KV]:
    """``{arch}.pooling_type`` from the sentence-transformers side files, where one mode llama.cpp
    has is set; an embedding model without one gets a warning and no key."""
    setup = read_embedding_setup(ckpt.side_file_names())
    mode = setup.pooling_mode() if setup is not None else None
    if mode in POOLING_TYPES:
        return {_LLM.POOLING_TYPE.format(arch=arch): kv_u32(int(POOLING_TYPES[mode]))}
    if setup is not None and setup.pooling is not None:
        warnings.append(f"pooling {'+'.join(setup.pooling.modes) or 'none'} has no GGUF pooling_type: none written")
    elif ckpt.config.family.task == EMBEDDING_TASK:
        warnings.append("no sentence-transformers pooling config (modules.json, 1_Pooling/): no pooling_type written")
    return {}


def general(
    name: str, arch: str, file_type: int, source_url: str | None = None, license: str | None = None
) -> dict[str, KV]:
    md = {
        _GEN.ARCHITECTURE: kv_str(arch),
        _GEN.TYPE: kv_str("model"),
        _GEN.NAME: kv_str(name),
        _GEN.QUANTIZED_BY: kv_str(f"bitconvert {__version__}"),
        _GEN.FILE_TYPE: kv_u32(file_type),
        _GEN.QUANTIZATION_VERSION: kv_u32(GGML_QUANT_VERSION),
    }
    if source_url:
        md[_GEN.SOURCE_URL] = kv_str(source_url)
        if source_url.startswith(HUB_URL):
            md[_GEN.SOURCE_REPO_URL] = kv_str(source_url)
    if license:
        md[_GEN.LICENSE] = kv_str(license)
    return md


def origin(source: Origin, path: Path) -> tuple[str, str | None, str | None]:
    """(general.name, general.source.url, general.license) for a checkpoint's origin and ``path``.

    A Hub source names the model and its URL; a GGUF source passes on its own; otherwise the name
    is the file's stem or the directory's name (never a Hub cache's commit-hash folder).
    """
    url = f"{HUB_URL}{source.source_repo}" if source.source_repo else source.source_url
    name = source.model_name or (path.stem if path.suffix == ".gguf" else path.name)
    return name, url, source.license


def source_config(cfg: ModelConfig) -> dict[str, Any]:
    """The source's config.json as it was read (its dtype included), for ``bitconvert.hf_config``."""
    return cfg.raw if cfg.raw else cfg.to_hf_dict(cfg.quantization, "BF16")


def bitconvert_keys(
    cfg: ModelConfig, source_format: str, scale_mode: str, scales: dict[str, Any], side_files: dict[str, Path]
) -> dict[str, KV]:
    md = {
        KEY_SOURCE_FORMAT: kv_str(source_format),
        KEY_SCALE_MODE: kv_str(scale_mode),
        KEY_HF_CONFIG: kv_str(json.dumps(source_config(cfg), separators=(",", ":"))),
    }
    if scales:
        md[SCALES_KEY] = kv_str(encode_records(scales))
    recorded = recorded_side_files(side_files)
    if recorded:
        md[KEY_SIDE_FILES] = kv_str(json.dumps(recorded, separators=(",", ":"), ensure_ascii=False))
    return md


def recorded_side_files(files: dict[str, Path]) -> dict[str, str]:
    """The sentence-transformers side files as text (a GGUF holds no folder), so converting back
    restores them; each must be UTF-8 text of at most MAX_RECORDED_SIDE_FILE bytes."""
    folders = tuple(n.rsplit("/", 1)[0] for n in files if "/" in n)
    out = {}
    for name, path in files.items():
        if not is_sentence_transformers_file(name, folders):
            continue
        try:
            raw = path.read_bytes()
            if len(raw) > MAX_RECORDED_SIDE_FILE:
                raise CheckpointError(path, f"side file larger than {MAX_RECORDED_SIDE_FILE} bytes: not recorded in GGUF")
            out[name] = raw.decode("utf-8")
        except OSError as exc:
            raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CheckpointError(path, "side file is not UTF-8 text: it cannot be recorded in the GGUF") from None
    return out


def read_side_files(f: GGUFFile) -> dict[str, str]:
    """The side files ``bitconvert.side_files`` recorded, by checked relative name (none where absent)."""
    raw = f.get(KEY_SIDE_FILES)
    if raw is None:
        return {}
    data = parse_json_text(raw, f.path, KEY_SIDE_FILES) if isinstance(raw, str) else None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CheckpointError(f.path, f"{KEY_SIDE_FILES} is not an object of file texts")
    out = {}
    for name, text in data.items():
        try:  # the GGUF string may hold bytes that are not UTF-8 (kept as surrogates): no file holds those
            name.encode("utf-8"), text.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointError(f.path, f"{KEY_SIDE_FILES}: {name!r:.80} is not valid UTF-8 text") from None
        folder, _, base = name.rpartition("/")
        checked = module_folder(folder, f.path) if folder else ""
        plain = base not in ("", ".", "..") and "\\" not in base and "\0" not in base
        if not plain or not (checked or base in TOP_LEVEL_FILES):
            raise CheckpointError(f.path, f"{KEY_SIDE_FILES} names {name!r:.80}, not a sentence-transformers file")
        out[f"{checked}/{base}" if checked else base] = text
    return out


# --- reading ----------------------------------------------------------------------------------
# Every number is checked where it is read: a key of the wrong type, zero, non-finite, or more than
# the file could hold ends in one CheckpointError line before anything is sized by it.

U32_MAX = 2**32 - 1


def _value(f: GGUFFile, key: str, default: Any) -> Any:
    v = f.get(key, default)
    if v is None:
        raise CheckpointError(f.path, f"metadata key {key} is missing")
    return v


def _count(f: GGUFFile, key: str, limit: int, why: str, default: int | None = None) -> int:
    """A positive integer key, at most ``limit`` (``why`` says what bounds it)."""
    v = _value(f, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise CheckpointError(f.path, f"metadata key {key} is not an integer: {v!r:.80}")
    if not 1 <= int(v) <= limit:
        raise CheckpointError(f.path, f"metadata key {key} is {int(v)}, must be from 1 to {limit} ({why})")
    return int(v)


def _positive_float(f: GGUFFile, key: str, default: float) -> float:
    v = _value(f, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise CheckpointError(f.path, f"metadata key {key} is not a number: {v!r:.80}")
    x = float(v)
    if not math.isfinite(x) or x <= 0:
        raise CheckpointError(f.path, f"metadata key {key} must be finite and positive, got {x}")
    kv = f.metadata.get(key)
    if kv is not None and kv.type == FLOAT32:
        # the shortest decimal that is this float32 (1e-05, not its binary value 9.999999747378752e-06)
        return float(str(np.float32(x)))
    return x


def _text(f: GGUFFile, key: str, default: str | None) -> str | None:
    v = f.get(key, default)
    if v is not None and not isinstance(v, str):
        raise CheckpointError(f.path, f"metadata key {key} is not a string: {v!r:.80}")
    return v


def source_family(f: GGUFFile) -> tuple[str, Family]:
    """(``general.architecture``, the family it holds: see :func:`.archs.family_for`)."""
    arch = _text(f, _GEN.ARCHITECTURE, None)
    if arch is None:
        raise CheckpointError(f.path, f"metadata key {_GEN.ARCHITECTURE} is missing")
    act = _text(f, HIDDEN_ACTIVATION.format(arch=arch), None)
    family = archs.family_for(arch, act, lambda name: name in f.tensors)
    if family is None:
        raise CheckpointError(f.path, f"GGUF architecture {arch!r:.80} is not a BitNet model bitconvert reads")
    return arch, family


def _token_id(f: GGUFFile, key: str, vocab: int, notes: list[str]) -> int | None:
    v = f.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise CheckpointError(f.path, f"metadata key {key} is {v!r:.80}, not a token id")
    if not 0 <= int(v) < vocab:  # e.g. bitnet.cpp's embedding converter forces the real vocabulary's EOS
        notes.append(f"metadata key {key} is {int(v)}, outside the vocabulary of {vocab}: not used as the model's")
        return None
    return int(v)


def derived_hf_config(f: GGUFFile, arch: str, family: Family, tied: bool, notes: list[str] | None = None) -> dict[str, Any]:
    """An HF config.json dict rebuilt from the GGUF hyperparameters alone, each checked as read."""
    key = {name: k.format(arch=arch) for name, k in _HYPER_KEYS.items()}
    values = f.size  # a dimension or count of values is bounded by the bytes that hold them
    # Every layer has tensors of its own: a block count above the tensor count cannot be true, and
    # checking it first keeps a forged one from sizing per-layer lists.
    layers = _count(f, key["layers"], len(f.tensors), f"the file holds {len(f.tensors)} tensors")
    hidden = _count(f, key["hidden"], values, "the file's size")
    heads = _count(f, key["heads"], hidden, "at most one head per embedding value")
    kv_heads = _count(f, key["kv_heads"], heads, "at most one per attention head", heads)
    tokens = f.get(_TOK.LIST)
    vocab = _count(f, key["vocab"], values, "the file's size", len(tokens) if isinstance(tokens, list) else None)
    head_dim = _head_dim(f, key, hidden, heads)
    d: dict[str, Any] = {
        "architectures": [family.hf_architecture],
        "model_type": family.model_type,
        "hidden_size": hidden,
        "intermediate_size": _count(f, key["ffn"], values, "the file's size"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": _count(f, key["context"], U32_MAX, "a u32", 2048),
        "rms_norm_eps": _positive_float(f, key["eps"], 1e-6),
        "rope_theta": _positive_float(f, key["rope_base"], 10000.0),
        "tie_word_embeddings": tied,
        family.activation_keys[0]: _text(f, key["act"], family.hidden_act),
        "head_dim": head_dim,
    }
    for tkey, hf in ((_TOK.BOS_ID, "bos_token_id"), (_TOK.EOS_ID, "eos_token_id")):
        tid = _token_id(f, tkey, vocab, notes if notes is not None else [])
        if tid is not None:
            d[hf] = tid
    d.update(_attention_layout(f, key, family, layers, notes if notes is not None else []))
    return d


def _attention_layout(f: GGUFFile, key: dict[str, str], family: Family, layers: int, notes: list[str]) -> dict:
    """Sliding-window keys where the file has them; a family whose layers slide by default reads as
    all full attention where the file says nothing (as llama.cpp runs such a file)."""
    out: dict[str, Any] = {}
    if f.get(key["swa_base"]) is not None:
        out["rope_local_base_freq"] = _positive_float(f, key["swa_base"], 10000.0)
    if f.get(key["window"]) is not None:
        out["sliding_window"] = _count(f, key["window"], U32_MAX, "a u32")
    elif family.default("sliding_window_pattern") is not None:
        out["layer_types"] = [FULL_ATTENTION] * layers
        notes.append(f"no {key['window']} in the file: every layer reads as full attention, as llama.cpp runs it")
    return out


def _head_dim(f: GGUFFile, key: dict[str, str], hidden: int, heads: int) -> int:
    """The key length, else the RoPE dimension count, else hidden / heads (which must divide)."""
    for name in ("key_length", "rope_dim"):
        if f.get(key[name]) is not None:
            return _count(f, key[name], f.size, "the file's size")
    if hidden % heads:
        raise CheckpointError(f.path, f"{key['hidden']} ({hidden}) is not a multiple of {key['heads']} ({heads})")
    return hidden // heads


_HYPER_KEYS = {
    "layers": _LLM.BLOCK_COUNT, "hidden": _LLM.EMBEDDING_LENGTH, "ffn": _LLM.FEED_FORWARD_LENGTH,
    "heads": _ATTN.HEAD_COUNT, "kv_heads": _ATTN.HEAD_COUNT_KV, "vocab": _LLM.VOCAB_SIZE,
    "context": _LLM.CONTEXT_LENGTH, "eps": _ATTN.LAYERNORM_RMS_EPS, "rope_base": _ROPE.FREQ_BASE,
    "act": HIDDEN_ACTIVATION, "key_length": _ATTN.KEY_LENGTH, "rope_dim": _ROPE.DIMENSION_COUNT,
    "window": _ATTN.SLIDING_WINDOW, "swa_base": _ROPE.FREQ_BASE_SWA,
}  # fmt: skip
_COMPARED = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "head_dim", "tie_word_embeddings",
)  # fmt: skip
_COMPARED_F32 = ("rms_norm_eps", "rope_theta")  # the GGUF keys hold float32: agree once rounded to it
#: what a broken embedded config can raise inside ModelConfig.from_hf_dict
_CONFIG_ERRORS = (CheckpointError, ArithmeticError, AttributeError, TypeError, ValueError)


def recorded_config(f: GGUFFile, notes: list[str]) -> ModelConfig | None:
    """bitconvert's embedded config.json (``bitconvert.hf_config``), or None with a note when unusable."""
    recorded = f.get(KEY_HF_CONFIG)
    if recorded is None:
        return None
    try:
        if not isinstance(recorded, str):
            raise CheckpointError(f.path, "not a string")
        d = parse_json_text(recorded, f.path, KEY_HF_CONFIG)
        if not isinstance(d, dict):
            raise CheckpointError(f.path, "not a JSON object")
        return ModelConfig.from_hf_dict(d, f.path)
    except _CONFIG_ERRORS as exc:
        problem = exc.problem if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        notes.append(f"ignored unreadable {KEY_HF_CONFIG}: {problem:.200}")
        return None


def read_config(f: GGUFFile, tied: bool, notes: list[str]) -> tuple[str, ModelConfig, dict[str, str]]:
    """(GGUF architecture, the model config, the precision of its float fields where it is not exact).

    bitconvert's recorded config.json when it agrees with the GGUF keys (exact); else the config
    derived from the keys, whose floats are as precise as their GGUF type (float32 as llama.cpp writes).
    """
    arch, family = source_family(f)
    derived = ModelConfig.from_hf_dict(derived_hf_config(f, arch, family, tied, notes), f.path)
    cfg = recorded_config(f, notes)
    if cfg is not None:
        differ = [k for k in _COMPARED if getattr(cfg, k) != getattr(derived, k)]
        differ += [k for k in _COMPARED_F32 if np.float32(getattr(cfg, k)) != np.float32(getattr(derived, k))]
        if cfg.family in archs.families_under(arch) and not differ:
            return arch, cfg, {}
        what = ", ".join(differ) or "architecture"
        notes.append(f"ignored {KEY_HF_CONFIG}: it disagrees with the GGUF metadata on {what}")
    precision = {}
    for field, name in (("rms_norm_eps", "eps"), ("rope_theta", "rope_base")):
        kv = f.metadata.get(_HYPER_KEYS[name].format(arch=arch))
        if kv is None or kv.type == FLOAT32:  # absent: the default, as llama.cpp would read it (float32)
            precision[field] = "float32"
    return arch, derived, precision
