"""The GGUF keys of bitnet.cpp's embedding converter (``utils/convert-bitnet-embedding-to-gguf.py``).

``--recipe bitnet.cpp`` on an embedding model writes exactly these, in this order (gguf-py writes
keys in the order they are added; a key added twice keeps its first place and its last value):

1. ``general.architecture``, ``general.name`` (the source folder's name);
2. from config.json, with the converter's own defaults: block count, context length (32768),
   embedding and feed-forward lengths, head counts (KV: the head count), vocab size, RoPE dimension
   count, key and value lengths (all ``head_dim``, else hidden / heads); ``rope.freq_base`` only where
   config.json has a top-level ``rope_theta``, the RMS epsilon only where it has ``rms_norm_eps``;
3. ``general.file_type`` (1 for F16, 40 for I2_S) and ``pooling_type``: the first module of
   ``modules.json`` whose type ends in ``Pooling``, its ``config.json``: mean (1) before cls (2)
   before last token (3); mean where nothing says;
4. the vocabulary (:mod:`.vocabulary`; ``gpt2`` with its pre-tokenizer and merges, or ``llama`` with
   scores and ``add_space_prefix = false``), then the special tokens by gguf-py's rules
   (:mod:`.special_vocab`), then the recipe's overrides for the architecture (Qwen3's EOS id
   151643 and ``add_eos_token``, forced whatever the vocabulary).

No bitconvert keys: the file is the converter's, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gguf.constants import Keys, PoolingType

from ...errors import CheckpointError, UsageError
from ...io.jsonfile import parse_json_text, read_json_object
from ...model.checkpoint import Checkpoint
from ...model.sentence_transformers import MODULE_CONFIG, MODULES_FILE, parse_modules, parse_pooling
from . import metadata as gguf_metadata
from .plan import Plan
from .special_vocab import ID_KEYS, special_vocab
from .stream_writer import KV, kv_bool, kv_f32, kv_f32s, kv_i32s, kv_str, kv_strs, kv_u32
from .tokenizer import pre_tokenizer_name
from .vocabulary import gpt2_vocabulary, llama_vocabulary

_LLM, _ATTN, _ROPE, _GEN, _TOK = Keys.LLM, Keys.Attention, Keys.Rope, Keys.General, Keys.Tokenizer
#: the converter's context length where config.json names none
DEFAULT_CONTEXT = 32768
#: its pooling rule: the first flag set, in this order; mean where none is
POOLING_ORDER = (("mean_tokens", PoolingType.MEAN), ("cls_token", PoolingType.CLS), ("lasttoken", PoolingType.LAST))
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def metadata(ckpt: Checkpoint, plan: Plan, report: Any) -> dict[str, KV]:
    cfg, raw, arch = ckpt.config, ckpt.config.raw, plan.arch
    name, _, _ = gguf_metadata.origin(ckpt.origin, ckpt.path)
    head_dim = cfg.head_dim if raw.get("head_dim") is not None else cfg.hidden_size // cfg.num_attention_heads
    context = cfg.max_position_embeddings if raw.get("max_position_embeddings") is not None else DEFAULT_CONTEXT
    hyper = [
        (_LLM.BLOCK_COUNT, cfg.num_hidden_layers), (_LLM.CONTEXT_LENGTH, context),
        (_LLM.EMBEDDING_LENGTH, cfg.hidden_size), (_LLM.FEED_FORWARD_LENGTH, cfg.intermediate_size),
        (_ATTN.HEAD_COUNT, cfg.num_attention_heads), (_ATTN.HEAD_COUNT_KV, cfg.num_key_value_heads),
        (_LLM.VOCAB_SIZE, cfg.vocab_size), (_ROPE.DIMENSION_COUNT, head_dim), (_ATTN.KEY_LENGTH, head_dim),
        (_ATTN.VALUE_LENGTH, head_dim),
    ]  # fmt: skip
    md: dict[str, KV] = {_GEN.ARCHITECTURE: kv_str(arch), _GEN.NAME: kv_str(name)}
    md.update((key.format(arch=arch), kv_u32(value)) for key, value in hyper)
    if raw.get("rope_theta") is not None:
        md[_ROPE.FREQ_BASE.format(arch=arch)] = kv_f32(cfg.rope_theta)
    if raw.get("rms_norm_eps") is not None:
        md[_ATTN.LAYERNORM_RMS_EPS.format(arch=arch)] = kv_f32(cfg.rms_norm_eps)
    md[_GEN.FILE_TYPE] = kv_u32(plan.wtype.file_type)
    md[_LLM.POOLING_TYPE.format(arch=arch)] = kv_u32(int(pooling_type(ckpt.side_file_names())))
    md.update(_vocabulary(ckpt, plan))
    return md


def pooling_type(files: dict[str, Path]) -> PoolingType:
    """The converter's pooling: the first ``...Pooling`` module's config, mean before cls before
    last token; mean where there is no modules.json, no Pooling module, or no flag set."""
    if MODULES_FILE not in files:
        return PoolingType.MEAN
    modules = parse_modules(_json(files[MODULES_FILE]), files[MODULES_FILE])
    module = next((m for m in modules if m.type.endswith("Pooling")), None)
    config = files.get(f"{module.path}/{MODULE_CONFIG}") if module is not None and module.path else None
    if config is None:
        return PoolingType.MEAN
    modes = parse_pooling(_json(config), config).modes
    return next((kind for mode, kind in POOLING_ORDER if mode in modes), PoolingType.MEAN)


def _json(path: Path) -> Any:
    try:
        return parse_json_text(path.read_bytes(), path)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read: {exc.strerror or exc}") from None


def _vocabulary(ckpt: Checkpoint, plan: Plan) -> dict[str, KV]:
    cfg, files = ckpt.config, ckpt.side_file_names()
    if "tokenizer.json" not in files:
        raise UsageError(f"--recipe bitnet.cpp: {ckpt.path} has no tokenizer.json, which its converter reads")
    tok = read_json_object(files["tokenizer.json"], "tokenizer.json")
    tcfg = read_json_object(files["tokenizer_config.json"]) if "tokenizer_config.json" in files else {}
    source = files["tokenizer.json"]
    md: dict[str, KV] = {}
    if cfg.family.gguf_vocab == "llama":
        vocab = llama_vocabulary(tok, tcfg, cfg.vocab_size, source)
        md[_TOK.MODEL], md[_TOK.PRE] = kv_str("llama"), kv_str("default")
        md[_TOK.LIST] = kv_strs(vocab.tokens)
        md[_TOK.SCORES] = kv_f32s(vocab.scores)
        md[_TOK.TOKEN_TYPE] = kv_i32s(vocab.types)
        md[_TOK.ADD_PREFIX] = kv_bool(False)
        merges = False
    else:
        pre = pre_tokenizer_name(tok.get("pre_tokenizer"))
        if pre is None:
            raise CheckpointError(source, "bitnet.cpp's embedding converter does not know this pre-tokenizer")
        vocab = gpt2_vocabulary(tok, tcfg, cfg.vocab_size, source)
        md[_TOK.MODEL], md[_TOK.PRE] = kv_str("gpt2"), kv_str(pre)
        md[_TOK.LIST] = kv_strs(vocab.tokens)
        md[_TOK.TOKEN_TYPE] = kv_i32s(vocab.types)
        merges = True
    sv = special_vocab(tok, tcfg or None, cfg.raw, merges, _chat_template(files), source)
    overrides = plan.style.vocab_overrides.get(plan.arch, {})
    for key, value in overrides.items():  # ids before the keys are written, flags after
        typ = key.removesuffix("_token_id")
        if typ in ID_KEYS and key.endswith("_token_id"):
            sv.ids[typ] = int(value)
    md.update(sv.keys())
    for key, value in overrides.items():
        if key.startswith("add_") and key.endswith("_token"):
            md[f"tokenizer.ggml.{key}"] = kv_bool(bool(value))
    return md


def _chat_template(files: dict[str, Path]) -> Any:
    """A chat_template.jinja's text, else chat_template.json's ``chat_template``, as gguf-py reads them."""
    if CHAT_TEMPLATE_FILES[0] in files:
        if any(name.startswith("additional_chat_templates/") for name in files):
            raise UsageError("named chat templates (additional_chat_templates/) are written under keys of their own: "
                             "not reproduced")  # fmt: skip
        try:
            return files[CHAT_TEMPLATE_FILES[0]].read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(files[CHAT_TEMPLATE_FILES[0]], f"cannot read: {exc}") from None
    if CHAT_TEMPLATE_FILES[1] in files:
        return read_json_object(files[CHAT_TEMPLATE_FILES[1]]).get("chat_template")
    return None
