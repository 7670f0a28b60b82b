"""Tokenizer metadata: HF ``tokenizer.json`` (byte-level BPE) <-> llama.cpp's ``tokenizer.ggml.*`` keys.

llama.cpp needs, for a BPE model: ``model = "gpt2"``, the tokens in id order, their types, the
merges, and a pre-tokenizer name (``tokenizer.ggml.pre``) that selects its split regex; a wrong or
missing one tokenizes text differently. The name is derived from the tokenizer's own split rules
(not from a hash of a probe text, which only matches the exact published vocabularies).

The reverse direction rebuilds a ``tokenizer.json`` + ``tokenizer_config.json`` from a GGUF so a
GGUF converted back to Hugging Face layout stays usable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf.constants import Keys, TokenType

from ...errors import CheckpointError
from ...io.jsonfile import read_json_object
from .parser import GGUFFile
from .stream_writer import KV, kv_bool, kv_f32s, kv_i32s, kv_str, kv_strs, kv_u32

NORMAL, CONTROL, USER_DEFINED = int(TokenType.NORMAL), int(TokenType.CONTROL), int(TokenType.USER_DEFINED)
UNUSED = int(TokenType.UNUSED)
_TOK = Keys.Tokenizer
MODEL_KEY = _TOK.MODEL

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2 / Qwen3's split: single digits where Llama 3 groups three
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: llama.cpp's pre-tokenizer name for each split regex it implements
SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
TOKENIZER_KEYS_PREFIX = "tokenizer."
#: the tokenizer model of a GGUF without a vocabulary: llama.cpp (and bitnet.cpp) refuse a file with no
#: ``tokenizer.ggml.model`` at all ("key not found in model"), and take this one to mean "no
#: vocabulary; {arch}.vocab_size tokens" (llama-vocab.cpp, LLAMA_VOCAB_TYPE_NONE)
NO_VOCAB = "no_vocab"


def no_vocab() -> dict[str, KV]:
    """The keys of a GGUF that holds no tokenizer, so that llama.cpp and bitnet.cpp still load it."""
    return {_TOK.MODEL: kv_str(NO_VOCAB)}


NO_TOKENIZER_HINT = "pass --no-tokenizer to write the GGUF without a tokenizer"


@dataclass
class TokenizerMetadata:
    kv: dict[str, KV] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _load_json(path: Path | None) -> dict[str, Any]:
    """A side file's JSON object; {} when there is none. A file that is there but unreadable is an error:
    silently writing a GGUF without its tokenizer would give a model llama.cpp cannot run on text."""
    if path is None or not path.is_file():
        return {}
    try:
        return read_json_object(path)
    except CheckpointError as exc:
        raise CheckpointError(path, f"{exc.problem}; {NO_TOKENIZER_HINT}") from None


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json ``pre_tokenizer``, when we recognise it."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") != "Sequence":
        return None
    steps = pre.get("pretokenizers")
    if not isinstance(steps, list) or len(steps) != 2 or not all(isinstance(step, dict) for step in steps):
        return None
    pattern = steps[0].get("pattern")
    if (
        steps[0].get("type") == "Split"
        and isinstance(pattern, dict)
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
    ):
        regex = pattern.get("Regex")
        return SPLITS.get(regex) if isinstance(regex, str) else None
    return None


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _templates(tok: dict[str, Any]) -> list[list[Any]]:
    """The ``single`` piece lists of the TemplateProcessing post-processors of a tokenizer.json (any
    shape the file has that is not one is skipped: the file is the user's, not ours)."""
    post = tok.get("post_processor")
    if not isinstance(post, dict):
        return []
    procs = post.get("processors") if post.get("type") == "Sequence" else [post]
    if not isinstance(procs, list):
        return []
    singles = (p.get("single") for p in procs if isinstance(p, dict) and p.get("type") == "TemplateProcessing")
    return [single for single in singles if isinstance(single, list)]


def _special_id(piece: Any) -> Any:
    special = piece.get("SpecialToken") if isinstance(piece, dict) else None
    return special.get("id") if isinstance(special, dict) else None


def _appends(tok: dict[str, Any]) -> str | None:
    """The special token a TemplateProcessing post-processor appends to a single text (Qwen3-Embedding's
    ``<|endoftext|>``), if any."""
    for single in _templates(tok):
        last = _special_id(single[-1]) if len(single) > 1 else None
        if isinstance(last, str):
            return last
    return None


def _adds_bos(tok: dict[str, Any], bos: str | None) -> bool:
    if bos is None:
        return False
    return any(_special_id(piece) == bos for single in _templates(tok) for piece in single)


def from_side_files(
    side_files: list[Path], vocab_size: int, bos_id: int | None, eos_id: int | list[int] | None
) -> TokenizerMetadata:
    """GGUF tokenizer keys from a checkpoint's ``tokenizer.json`` (and ``tokenizer_config.json``).

    No tokenizer.json, or one llama.cpp's gpt2 model cannot hold, gives a warning and no keys; a
    tokenizer.json that cannot be read is an error (see :func:`_load_json`).
    """
    out = TokenizerMetadata()
    by_name = {p.name: p for p in side_files}
    tok = _load_json(by_name.get("tokenizer.json"))
    if not tok:
        out.warnings.append("no tokenizer.json: the GGUF has no tokenizer (llama.cpp needs one to run text)")
        return out
    model = tok.get("model")
    if (
        not isinstance(model, dict)
        or model.get("type") != "BPE"
        or model.get("byte_fallback")
        or not isinstance(model.get("vocab"), dict)
    ):
        out.warnings.append(
            "tokenizer.json is not a byte-level BPE tokenizer: only those are embedded, the GGUF has no tokenizer"
        )
        return out
    vocab = _vocabulary(model["vocab"], tok.get("added_tokens"), vocab_size)
    if isinstance(vocab, str):
        out.warnings.append(vocab)
        return out
    tokens, types = vocab
    raw_merges = model.get("merges") or []
    if not isinstance(raw_merges, list):
        raise CheckpointError(by_name["tokenizer.json"], f"its BPE merges are not a list; {NO_TOKENIZER_HINT}")
    merges = [" ".join(map(str, m)) if isinstance(m, list) else str(m) for m in raw_merges]
    if _not_utf8("\n".join(tokens)) or _not_utf8("\n".join(merges)):  # JSON escapes can spell lone surrogates
        raise CheckpointError(
            by_name["tokenizer.json"], f"holds a token or merge that is not valid UTF-8; {NO_TOKENIZER_HINT}"
        )
    pre = pre_tokenizer_name(tok.get("pre_tokenizer"))
    if pre is None:
        pre = "default"
        out.warnings.append("unrecognised pre-tokenizer in tokenizer.json: wrote tokenizer.ggml.pre = 'default'")
    out.kv[_TOK.MODEL] = kv_str("gpt2")
    out.kv[_TOK.PRE] = kv_str(pre)
    out.kv[_TOK.LIST] = kv_strs(tokens)
    out.kv[_TOK.TOKEN_TYPE] = kv_i32s(types)
    out.kv[_TOK.MERGES] = kv_strs(merges)
    tcfg = _load_json(by_name.get("tokenizer_config.json"))
    out.kv.update(_special_tokens(tok, tcfg, tokens, bos_id, eos_id))
    return out


def llama_from_side_files(files: dict[str, Path], vocab_size: int, config: dict[str, Any], warnings: list[str]) -> dict[str, KV]:
    """llama.cpp's SPM keys (``model = "llama"``: pieces, scores, types) from a byte-fallback BPE
    tokenizer.json (Gemma's), special tokens by gguf-py's rules; none, with a warning, without one."""
    from .special_vocab import special_vocab
    from .vocabulary import llama_vocabulary

    tok = _load_json(files.get("tokenizer.json"))
    if not tok:
        warnings.append("no tokenizer.json: the GGUF has no tokenizer (llama.cpp needs one to run text)")
        return {}
    tcfg = _load_json(files.get("tokenizer_config.json"))
    vocab = llama_vocabulary(tok, tcfg, vocab_size, files["tokenizer.json"])
    kv = {
        _TOK.MODEL: kv_str("llama"), _TOK.PRE: kv_str("default"), _TOK.LIST: kv_strs(vocab.tokens),
        _TOK.SCORES: kv_f32s(vocab.scores), _TOK.TOKEN_TYPE: kv_i32s(vocab.types), _TOK.ADD_PREFIX: kv_bool(False),
    }  # fmt: skip
    kv.update(special_vocab(tok, tcfg or None, config, False, source=files["tokenizer.json"]).keys())
    return kv


def _vocabulary(vocab: dict, added_tokens: Any, size: int) -> tuple[list[str], list[int]] | str:
    """Tokens in id order and their llama.cpp types; a warning instead when an id does not fit."""
    tokens: list[str | None] = [None] * size
    types = [NORMAL] * size
    for text, tid in vocab.items():
        if not isinstance(tid, int) or not 0 <= tid < size:
            return f"tokenizer.json token id {tid} lies outside the model's vocabulary of {size}; no tokenizer written"
        tokens[tid] = text
    for added in added_tokens if isinstance(added_tokens, list) else []:
        tid = added.get("id") if isinstance(added, dict) else None
        if isinstance(tid, int) and 0 <= tid < size and isinstance(added.get("content"), str):
            tokens[tid] = added["content"]
            types[tid] = CONTROL if added.get("special") else USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            # llama.cpp's convention for ids the tokenizer does not use: UNUSED, so that the text
            # "[PAD500]" is never tokenized as token 500 (a USER_DEFINED token would be matched whole)
            tokens[i] = f"[PAD{i}]"
            types[i] = UNUSED
    return tokens, types  # type: ignore[return-value]


def _special_tokens(
    tok: dict[str, Any], tcfg: dict[str, Any], tokens: list[str], bos_id: int | None, eos_id: int | list[int] | None
) -> dict[str, KV]:
    """bos / eos / padding ids (the config's, else tokenizer_config.json's), add_bos/eos, chat template."""
    ids = {t: i for i, t in enumerate(tokens)}
    bos_text = _token_content(tcfg.get("bos_token"))
    if bos_id is None and bos_text in ids:
        bos_id = ids[bos_text]
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    eos_text = _token_content(tcfg.get("eos_token"))
    if eos_id is None and eos_text in ids:
        eos_id = ids[eos_text]
    pad_text = _token_content(tcfg.get("pad_token"))
    kv: dict[str, KV] = {}
    if bos_id is not None:
        kv[_TOK.BOS_ID] = kv_u32(bos_id)
    if eos_id is not None:
        kv[_TOK.EOS_ID] = kv_u32(eos_id)
    if pad_text in ids:
        kv[_TOK.PAD_ID] = kv_u32(ids[pad_text])
    bos_token = tokens[bos_id] if bos_id is not None and 0 <= bos_id < len(tokens) else None
    add_bos = tcfg.get("add_bos_token")
    kv[_TOK.ADD_BOS] = kv_bool(add_bos if isinstance(add_bos, bool) else _adds_bos(tok, bos_token))
    eos_token = tokens[eos_id] if eos_id is not None and 0 <= eos_id < len(tokens) else None
    add_eos = tcfg.get("add_eos_token")
    appended = _appends(tok)
    kv[_TOK.ADD_EOS] = kv_bool(add_eos if isinstance(add_eos, bool) else appended is not None and appended == eos_token)
    template = tcfg.get("chat_template")
    if isinstance(template, list):  # named templates: llama.cpp takes the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        kv[_TOK.CHAT_TEMPLATE] = kv_str(template)
    return kv


def from_gguf(f: GGUFFile) -> dict[str, KV]:
    """Every tokenizer key of a GGUF, to carry into another GGUF unchanged."""
    return {k: v for k, v in f.metadata.items() if k.startswith(TOKENIZER_KEYS_PREFIX)}


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
