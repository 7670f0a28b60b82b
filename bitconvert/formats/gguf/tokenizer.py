"""Tokenizer metadata: HF ``tokenizer.json`` (byte-level BPE) <-> llama.cpp's ``tokenizer.ggml.*`` keys.

llama.cpp needs, for a BPE model: ``model = "gpt2"``, the tokens in id order, their types, the
merges, and a pre-tokenizer name (``tokenizer.ggml.pre``) that selects its split regex; a wrong or
missing one tokenizes text differently. The name is derived from the tokenizer's own split rules
(not from a hash of a probe text, which only matches the exact published vocabularies).

The reverse direction rebuilds a ``tokenizer.json`` + ``tokenizer_config.json`` from a GGUF so a
GGUF converted back to Hugging Face layout stays usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .parser import GGUFFile
from .stream_writer import KV, kv_bool, kv_i32s, kv_str, kv_strs, kv_u32

# token types (llama.cpp / gguf-py TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKENIZER_KEYS_PREFIX = "tokenizer."


@dataclass
class TokenizerMetadata:
    kv: dict[str, KV] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _load_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _pre_type(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json ``pre_tokenizer``, when we recognise it."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers") or []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
    ):
        return "llama-bpe"
    return None


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _adds_bos(tok: dict[str, Any], bos: str | None) -> bool:
    post = tok.get("post_processor")
    if not isinstance(post, dict) or bos is None:
        return False
    procs = post.get("processors") if post.get("type") == "Sequence" else [post]
    for p in procs or []:
        if isinstance(p, dict) and p.get("type") == "TemplateProcessing":
            for piece in p.get("single") or []:
                if isinstance(piece, dict) and (piece.get("SpecialToken") or {}).get("id") == bos:
                    return True
    return False


def from_side_files(
    side_files: list[Path], vocab_size: int, bos_id: int | None, eos_id: int | list[int] | None
) -> TokenizerMetadata:
    """GGUF tokenizer keys from a checkpoint's ``tokenizer.json`` (and ``tokenizer_config.json``)."""
    out = TokenizerMetadata()
    by_name = {p.name: p for p in side_files}
    tok = _load_json(by_name.get("tokenizer.json"))
    if not tok:
        out.warnings.append("no readable tokenizer.json: the GGUF has no tokenizer (llama.cpp needs one to run text)")
        return out
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not isinstance(model.get("vocab"), dict):
        out.warnings.append(
            "tokenizer.json is not a byte-level BPE tokenizer: only those are embedded, the GGUF has no tokenizer"
        )
        return out
    tcfg = _load_json(by_name.get("tokenizer_config.json"))

    tokens: list[str | None] = [None] * vocab_size
    types = [NORMAL] * vocab_size
    for text, tid in model["vocab"].items():
        if not isinstance(tid, int) or not 0 <= tid < vocab_size:
            out.warnings.append(
                f"tokenizer.json token id {tid} lies outside the model's vocabulary of {vocab_size}; "
                "no tokenizer written"
            )
            return TokenizerMetadata(warnings=out.warnings)
        tokens[tid] = text
    for added in tok.get("added_tokens") or []:
        tid = added.get("id")
        if isinstance(tid, int) and 0 <= tid < vocab_size and isinstance(added.get("content"), str):
            tokens[tid] = added["content"]
            types[tid] = CONTROL if added.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"[PAD{i}]"  # llama.cpp's convention for ids the tokenizer does not use
            types[i] = USER_DEFINED

    merges = []
    for m in model.get("merges") or []:
        merges.append(" ".join(m) if isinstance(m, list) else str(m))

    pre = _pre_type(tok.get("pre_tokenizer"))
    if pre is None:
        pre = "default"
        out.warnings.append("unrecognised pre-tokenizer in tokenizer.json: wrote tokenizer.ggml.pre = 'default'")

    ids = {t: i for i, t in enumerate(tokens)}
    bos_text = _token_content(tcfg.get("bos_token"))
    if bos_id is None and bos_text in ids:
        bos_id = ids[bos_text]
    eos_text = _token_content(tcfg.get("eos_token"))
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if eos_id is None and eos_text in ids:
        eos_id = ids[eos_text]
    pad_text = _token_content(tcfg.get("pad_token"))

    kv = out.kv
    kv["tokenizer.ggml.model"] = kv_str("gpt2")
    kv["tokenizer.ggml.pre"] = kv_str(pre)
    kv["tokenizer.ggml.tokens"] = kv_strs(tokens)  # type: ignore[arg-type]
    kv["tokenizer.ggml.token_type"] = kv_i32s(types)
    kv["tokenizer.ggml.merges"] = kv_strs(merges)
    if bos_id is not None:
        kv["tokenizer.ggml.bos_token_id"] = kv_u32(bos_id)
    if eos_id is not None:
        kv["tokenizer.ggml.eos_token_id"] = kv_u32(eos_id)
    if pad_text in ids:
        kv["tokenizer.ggml.padding_token_id"] = kv_u32(ids[pad_text])
    bos_token = tokens[bos_id] if bos_id is not None and 0 <= bos_id < vocab_size else None
    add_bos = tcfg.get("add_bos_token")
    kv["tokenizer.ggml.add_bos_token"] = kv_bool(add_bos if isinstance(add_bos, bool) else _adds_bos(tok, bos_token))
    kv["tokenizer.ggml.add_eos_token"] = kv_bool(bool(tcfg.get("add_eos_token", False)))
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: llama.cpp takes the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        kv["tokenizer.chat_template"] = kv_str(template)
    return out


def from_gguf(f: GGUFFile) -> dict[str, KV]:
    """Every tokenizer key of a GGUF, to carry into another GGUF unchanged."""
    return {k: v for k, v in f.metadata.items() if k.startswith(TOKENIZER_KEYS_PREFIX)}


# --- GGUF -> tokenizer.json -----------------------------------------------------------------------


def write_hf_tokenizer(f: GGUFFile, out: Path) -> list[Path]:
    """Rebuild ``tokenizer.json`` and ``tokenizer_config.json`` in ``out`` from a gpt2-model GGUF.

    Returns the files written (none when the GGUF holds no byte-level BPE tokenizer).
    """
    if f.get("tokenizer.ggml.model") != "gpt2":
        return []
    tokens = f.get("tokenizer.ggml.tokens")
    merges = f.get("tokenizer.ggml.merges") or []
    types = f.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not isinstance(merges, list):
        return []
    types = [int(t) for t in types] if types is not None and len(types) == len(tokens) else [NORMAL] * len(tokens)
    vocab, added = {}, []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            added.append(
                {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": kind == CONTROL}
            )  # fmt: skip
        else:
            vocab[text] = i
    pre_name = f.get("tokenizer.ggml.pre")
    if pre_name == "llama-bpe":
        pre: dict[str, Any] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
    else:
        pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    bos_id = f.get("tokenizer.ggml.bos_token_id")
    eos_id = f.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if isinstance(bos_id, int) and 0 <= bos_id < len(tokens) else None
    eos = tokens[eos_id] if isinstance(eos_id, int) and 0 <= eos_id < len(tokens) else None
    post = None
    if f.get("tokenizer.ggml.add_bos_token") and bos is not None:
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
        }  # fmt: skip
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": pre_name == "llama-bpe", "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }  # fmt: skip
    tcfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if bos is not None:
        tcfg["bos_token"] = bos
    if eos is not None:
        tcfg["eos_token"] = eos
    pad_id = f.get("tokenizer.ggml.padding_token_id")
    if isinstance(pad_id, int) and 0 <= pad_id < len(tokens):
        tcfg["pad_token"] = tokens[pad_id]
    if isinstance(f.get("tokenizer.chat_template"), str):
        tcfg["chat_template"] = f.get("tokenizer.chat_template")
    files = [out / "tokenizer.json", out / "tokenizer_config.json"]
    files[0].write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    files[1].write_text(json.dumps(tcfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return files
