"""GGUF -> Hugging Face tokenizer files: a GGUF's vocabulary checked, and ``tokenizer.json`` /
``tokenizer_config.json`` rebuilt from a gpt2-model (byte-level BPE) GGUF. The other direction is
:mod:`.tokenizer`."""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import CheckpointError
from . import metadata, tokenizer
from .parser import GGUFFile
from .tokenizer import CONTROL, NORMAL, SPLITS, USER_DEFINED, _TOK, _not_utf8


def _check_utf8(f: GGUFFile, key: str, texts: list[str]) -> None:
    """JSON files hold UTF-8 only: a GGUF string of other bytes (kept as surrogates) is refused by name."""
    try:
        "\n".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        bad = next(i for i, t in enumerate(texts) if _not_utf8(t))
        raise CheckpointError(f.path, f"{key} item {bad} is not valid UTF-8: {texts[bad]!r:.60}") from None




def check_vocabulary(f: GGUFFile, rows: int) -> None:
    """Refuse a GGUF vocabulary that no tokenizer could be rebuilt from, before anything is written:
    more tokens than embedding rows, per-token arrays of other lengths, a special token id that is not
    an integer, and (for gpt2 BPE, which maps each string to one id) a token string given twice."""
    tokens = f.get(_TOK.LIST)
    if tokens is None:
        return
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f.path, f"{_TOK.LIST} is not a list of strings")
    if len(tokens) > rows:
        raise CheckpointError(f.path, f"{_TOK.LIST} has {len(tokens)} tokens for {rows} embedding rows")
    for key in (_TOK.TOKEN_TYPE, _TOK.SCORES):
        values = f.get(key)
        if values is not None and (not hasattr(values, "__len__") or len(values) != len(tokens)):
            n = len(values) if hasattr(values, "__len__") else "not a list of"
            raise CheckpointError(f.path, f"{key} has {n} entries for {len(tokens)} tokens")
    # A special id outside the list is read with a note and left out of the rebuilt tokenizer (bitnet.cpp's
    # embedding converter writes the full Qwen3 vocabulary's EOS whatever the list); only a non-integer is refused.
    for key in (_TOK.BOS_ID, _TOK.EOS_ID, _TOK.PAD_ID, _TOK.UNK_ID, _TOK.SEP_ID):
        tid = f.get(key)
        if tid is not None and (isinstance(tid, bool) or not isinstance(tid, (int, np.integer))):
            raise CheckpointError(f.path, f"{key} {tid!r:.60} is not a token id")
    if f.get(_TOK.MODEL) == "gpt2":
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise CheckpointError(f.path, f"{_TOK.LIST} holds {t!r:.60} twice (ids {seen[t]} and {i})")
            seen[t] = i


def write_hf_tokenizer(f: GGUFFile, out: Path) -> list[Path]:
    """Rebuild ``tokenizer.json`` and ``tokenizer_config.json`` in ``out`` from a gpt2-model GGUF.

    Returns the files written (none when the GGUF holds no byte-level BPE tokenizer).
    """
    if f.get(_TOK.MODEL) != "gpt2":
        return []
    tokens = f.get(_TOK.LIST)
    merges = f.get(_TOK.MERGES) or []
    if not isinstance(tokens, list) or not isinstance(merges, list):
        return []
    _check_utf8(f, _TOK.LIST, tokens)
    _check_utf8(f, _TOK.MERGES, merges)
    vocab, added = _hf_vocab(tokens, f.get(_TOK.TOKEN_TYPE))
    pre_name = f.get(_TOK.PRE)
    bos_id, eos_id = f.get(_TOK.BOS_ID), f.get(_TOK.EOS_ID)
    bos, eos = _token(tokens, bos_id), _token(tokens, eos_id)
    template = _hf_template(bos if f.get(_TOK.ADD_BOS) else None, bos_id, eos if f.get(_TOK.ADD_EOS) else None, eos_id)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _hf_pre_tokenizer(pre_name),
        "post_processor": template,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": pre_name == "llama-bpe", "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }  # fmt: skip
    files = [out / "tokenizer.json", out / "tokenizer_config.json"]
    files[0].write_text(json.dumps(tok, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    files[1].write_text(
        json.dumps(_hf_tokenizer_config(f, tokens), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return files


def _token(tokens: list[str], tid: Any) -> str | None:
    return tokens[tid] if isinstance(tid, int) and 0 <= tid < len(tokens) else None


def _hf_vocab(tokens: list[str], types: Any) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(BPE vocab, added tokens): CONTROL and USER_DEFINED tokens are added tokens, the rest vocab."""
    integral = isinstance(types, np.ndarray) and types.dtype.kind in "iu" and len(types) == len(tokens)
    kinds = types.tolist() if integral else [NORMAL] * len(tokens)
    vocab, added = {}, []
    for i, (text, kind) in enumerate(zip(tokens, kinds)):
        if kind in (CONTROL, USER_DEFINED):
            added.append(
                {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": kind == CONTROL}
            )  # fmt: skip
        else:
            vocab[text] = i
    return vocab, added


def _hf_pre_tokenizer(pre_name: Any) -> dict[str, Any]:
    split = next((regex for regex, name in SPLITS.items() if name == pre_name), None)
    if split is not None:
        return {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        }
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def _hf_template(bos: str | None, bos_id: Any, eos: str | None, eos_id: Any) -> dict[str, Any] | None:
    """The post-processor adding BOS before and / or EOS after each text (None: neither)."""
    if bos is None and eos is None:
        return None

    def text(seq: str, type_id: int) -> list[dict[str, Any]]:
        around = [{"Sequence": {"id": seq, "type_id": type_id}}]
        if bos is not None:
            around.insert(0, {"SpecialToken": {"id": bos, "type_id": type_id}})
        if eos is not None:
            around.append({"SpecialToken": {"id": eos, "type_id": type_id}})
        return around

    special = {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in ((bos, bos_id), (eos, eos_id)) if t is not None}
    return {"type": "TemplateProcessing", "single": text("A", 0), "pair": text("A", 0) + text("B", 1),
            "special_tokens": special}  # fmt: skip


def _hf_tokenizer_config(f: GGUFFile, tokens: list[str]) -> dict[str, Any]:
    tcfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for key, name in ((_TOK.BOS_ID, "bos_token"), (_TOK.EOS_ID, "eos_token"), (_TOK.PAD_ID, "pad_token")):
        text = _token(tokens, f.get(key))
        if text is not None:
            tcfg[name] = text
    template = f.get(_TOK.CHAT_TEMPLATE)
    if isinstance(template, str):
        _check_utf8(f, _TOK.CHAT_TEMPLATE, [template])
        tcfg["chat_template"] = template
    return tcfg


def side_files(f: GGUFFile, ckpt: Any, notes: list[str]) -> list[Path]:
    """tokenizer.json / tokenizer_config.json rebuilt, and the sentence-transformers files bitconvert
    recorded, in a folder that lives as long as ``ckpt`` (its paths name the files as in the source)."""
    model = f.get(metadata.Keys.Tokenizer.MODEL)
    if model == tokenizer.NO_VOCAB:  # a file written without a tokenizer says so; nothing to rebuild
        model = None
    recorded = metadata.read_side_files(f)
    if model is None and not recorded:
        return []
    folder = Path(tempfile.mkdtemp(prefix="bitconvert-gguf-tokenizer-"))
    weakref.finalize(ckpt, shutil.rmtree, folder, True)
    files = write_hf_tokenizer(f, folder) if model is not None else []
    if model is not None and not files:
        notes.append(f"tokenizer model {model!r} is not rebuilt as tokenizer.json (only gpt2 BPE is)")
    for name, text in recorded.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(path)
    ckpt.side_root = folder
    return files
