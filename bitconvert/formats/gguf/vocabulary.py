"""Vocabularies from ``tokenizer.json`` as llama.cpp's token arrays: the pieces, their types and scores.

Two layouts, chosen by the family record (``Family.gguf_vocab``):

- ``gpt2`` (byte-level BPE, e.g. Qwen3): pieces in id order, ``[PAD<i>]`` for ids the tokenizer
  does not use, added tokens CONTROL (special, or shaped like ``<...>``, ``[...]``) or USER_DEFINED;
- ``llama`` (a SentencePiece-style BPE with byte fallback, e.g. Gemma3's tokenizer.json): the pieces
  of ``model.vocab``, ``<0xHH>`` pieces BYTE, ``<unk>`` UNKNOWN, added tokens CONTROL or
  USER_DEFINED (score -1000), the rest NORMAL scored by their merge: ``-rank`` of the first merge
  that produces them (0 where none does), unused ids UNUSED (score -10000).

These are the rules of bitnet.cpp's embedding converter; bitconvert's own GGUF uses the ``llama``
layout the same way (llama.cpp's SPM tokenizer needs pieces and scores, which tokenizer.json holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import TokenType

from ...errors import CheckpointError

NORMAL, UNKNOWN, CONTROL = int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL)
USER_DEFINED, UNUSED, BYTE = int(TokenType.USER_DEFINED), int(TokenType.UNUSED), int(TokenType.BYTE)
SPM_SPACE = "\u2581"  # SentencePiece's word-boundary mark
ADDED_SCORE, UNUSED_SCORE = -1000.0, -10000.0


@dataclass
class Vocabulary:
    tokens: list[str]
    types: list[int]
    scores: np.ndarray | None = None  # float32, the ``llama`` layout only


@dataclass(frozen=True)
class Added:
    content: str
    special: bool
    normalized: bool


def looks_special(token: str) -> bool:
    """``<|...|>``, ``<...>``, ``[...]``: typed CONTROL by the converter even when not marked special."""
    return bool(token) and token.startswith(("<|", "<", "[")) and token.endswith(("|>", ">", "]"))


def _model(tok: dict[str, Any], source: Path | str) -> dict[str, Any]:
    model = tok.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise CheckpointError(source, "tokenizer.json holds no BPE vocabulary")
    return model


def added_tokens(tok: dict[str, Any], tcfg: dict[str, Any]) -> dict[int, Added]:
    """Added tokens by id: tokenizer.json's, then tokenizer_config.json's ``added_tokens_decoder`` for
    ids it lacks (transformers' ``added_tokens_decoder`` holds both)."""
    out: dict[int, Added] = {}
    for a in tok.get("added_tokens") or []:
        if isinstance(a, dict) and isinstance(a.get("id"), int) and isinstance(a.get("content"), str):
            out[a["id"]] = Added(a["content"], bool(a.get("special")), bool(a.get("normalized")))
    decoder = tcfg.get("added_tokens_decoder")
    for key, a in decoder.items() if isinstance(decoder, dict) else ():
        if isinstance(a, dict) and isinstance(a.get("content"), str) and str(key).isdigit() and int(key) not in out:
            out[int(key)] = Added(a["content"], bool(a.get("special")), bool(a.get("normalized")))
    return out


def _check_ids(vocab: dict[str, Any], size: int, source: Path | str) -> None:
    for text, tid in vocab.items():
        if isinstance(tid, bool) or not isinstance(tid, int) or tid < 0:
            raise CheckpointError(source, f"tokenizer.json gives token {text!r:.40} the id {tid!r:.40}")
    if len(vocab) > size * 4 + 1024:  # far more pieces than ids: not this model's tokenizer
        raise CheckpointError(source, f"tokenizer.json has {len(vocab)} pieces for a vocabulary of {size}")


def gpt2_vocabulary(tok: dict[str, Any], tcfg: dict[str, Any], size: int, source: Path | str) -> Vocabulary:
    """The ``gpt2`` layout (see the module docstring)."""
    vocab = _model(tok, source)["vocab"]
    _check_ids(vocab, size, source)
    added = added_tokens(tok, tcfg)
    by_id = {tid: text for text, tid in vocab.items()}
    by_id.update((tid, a.content) for tid, a in added.items())
    contents = {a.content for a in added.values()}
    tokens, types = [], []
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in contents:
            mark = added.get(i)
            special = mark.special if mark is not None else any(a.special for a in added.values() if a.content == text)
            if special or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace(SPM_SPACE, " ")
                types.append(USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(NORMAL)
    return Vocabulary(tokens, types)


def _merge_ranks(merges: Any, source: Path | str) -> dict[str, float]:
    """Each piece a merge produces -> minus the rank of the first merge producing it."""
    out: dict[str, float] = {}
    for rank, merge in enumerate(merges if isinstance(merges, list) else []):
        if isinstance(merge, list) and all(isinstance(p, str) for p in merge):
            result = "".join(merge)
        elif isinstance(merge, str):
            result = "".join(merge.split(" ", 1))
        else:
            raise CheckpointError(source, f"tokenizer.json merge {rank} is neither a string nor a pair")
        out.setdefault(result, -float(rank))
    return out


def _is_byte_piece(text: str) -> bool:
    return len(text) == 6 and text.startswith("<0x") and text.endswith(">")


def llama_vocabulary(tok: dict[str, Any], tcfg: dict[str, Any], size: int, source: Path | str) -> Vocabulary:
    """The ``llama`` layout (see the module docstring)."""
    model = _model(tok, source)
    _check_ids(model["vocab"], size, source)
    ranks = _merge_ranks(model.get("merges") or [], source)
    added = added_tokens(tok, tcfg)
    by_id = {tid: text for text, tid in model["vocab"].items()}
    tokens, types = [], []
    scores = np.empty(size, dtype=np.float32)
    for i in range(size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            scores[i] = UNUSED_SCORE
            continue
        if i in added:
            types.append(CONTROL if added[i].special or looks_special(text) else USER_DEFINED)
            scores[i] = ADDED_SCORE
        elif _is_byte_piece(text):
            types.append(BYTE)
            scores[i] = 0.0
        elif text == "<unk>":
            types.append(UNKNOWN)
            scores[i] = 0.0
        else:
            types.append(NORMAL)
            scores[i] = ranks.get(text, 0.0)
        tokens.append(text)
    return Vocabulary(tokens, types, scores)
