"""The special-token keys llama.cpp's Python converters write, derived as gguf-py's ``SpecialVocab`` does.

Converters built on gguf-py (bitnet.cpp's embedding converter among them) take merges, special
token ids, ``add_*_token`` flags, the chat template and normalizer flags from ``tokenizer.json``,
``tokenizer_config.json`` and ``config.json`` by ``SpecialVocab``'s rules, which this module follows
(gguf-py as of llama.cpp 0c1e57098), in the order it writes them:

- merges from ``tokenizer.json`` (pairs joined by a space, a space inside a piece as U+0120);
- the post-processor decides ``add_bos`` / ``add_eos`` / ``add_sep``: a leading special token of a
  ``TemplateProcessing`` that is the BOS (or CLS) means add BOS; a trailing one that is not the
  configured EOS becomes the EOS, the old EOS moving to ``eot`` (then ``eom``);
- ``tokenizer_config.json``'s ``add_<t>_token`` fill flags the post-processor left unset; its
  ``<t>_token`` contents are looked up among tokenizer.json's added tokens; ``config.json``'s
  ``<t>_token_id`` fill ids still unset; the first id found for a type wins;
- only bos, eos, unk, sep, pad, mask, eot, eom ids and add_bos/eos/sep flags have keys.

Only what the rules above produce is modelled; a list of named chat templates is refused (the
recipe cannot promise the producer's keys for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf.constants import Keys

from ...errors import CheckpointError, UsageError
from .stream_writer import KV, kv_bool, kv_str, kv_strs, kv_u32

_TOK = Keys.Tokenizer
TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
ID_KEYS = {"bos": _TOK.BOS_ID, "eos": _TOK.EOS_ID, "unk": _TOK.UNK_ID, "sep": _TOK.SEP_ID, "pad": _TOK.PAD_ID,
           "mask": _TOK.MASK_ID, "eot": _TOK.EOT_ID, "eom": _TOK.EOM_ID}  # fmt: skip
ADD_KEYS = {"bos": _TOK.ADD_BOS, "eos": _TOK.ADD_EOS, "sep": _TOK.ADD_SEP}
#: a space inside a merge's piece, as gguf-py encodes it (the byte-level alphabet's space)
SPACE_IN_MERGE = chr(ord(" ") + 256)


@dataclass
class SpecialVocab:
    merges: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None

    def keys(self) -> dict[str, KV]:
        """The keys in the order gguf-py's ``add_to_gguf`` writes them."""
        out: dict[str, KV] = {}
        if self.merges:
            out[_TOK.MERGES] = kv_strs(self.merges)
        out.update((ID_KEYS[t], kv_u32(i)) for t, i in self.ids.items() if t in ID_KEYS)
        out.update((ADD_KEYS[t], kv_bool(v)) for t, v in self.add.items() if t in ADD_KEYS)
        if self.chat_template is not None:
            out[_TOK.CHAT_TEMPLATE] = kv_str(self.chat_template)
        if self.lowercase is not None:
            out[_TOK.NORMALIZER_LOWERCASE] = kv_bool(self.lowercase)
        if self.strip_accents is not None:
            out[_TOK.NORMALIZER_STRIP_ACCENTS] = kv_bool(self.strip_accents)
        return out


def _merges(tok: dict[str, Any], source: Path | str) -> list[str]:
    raw = (tok.get("model") or {}).get("merges") if isinstance(tok.get("model"), dict) else None
    if not isinstance(raw, list) or not raw:
        return []
    if all(isinstance(m, str) for m in raw):
        return list(raw)
    if all(isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m) for m in raw):
        return [" ".join(p.replace(" ", SPACE_IN_MERGE) for p in pair) for pair in raw]
    raise CheckpointError(source, "tokenizer.json merges are neither strings nor pairs of strings")


def _normalizer(sv: SpecialVocab, norm: Any) -> None:
    if not isinstance(norm, dict):
        return
    kind = norm.get("type")
    if kind == "Lowercase":
        sv.lowercase = True
    elif kind == "StripAccents":
        sv.strip_accents = True
    elif kind == "BertNormalizer":
        if "lowercase" in norm:
            sv.lowercase = norm["lowercase"]
        if "strip_accents" in norm:
            sv.strip_accents = norm["strip_accents"]
    elif kind == "Sequence":
        for step in norm.get("normalizers") or []:
            _normalizer(sv, step)


def _special_id(step: Any) -> Any:
    return (step.get("SpecialToken") or {}).get("id") if isinstance(step, dict) else None


class _Reader:
    """One pass over the files, as SpecialVocab._load makes it (its working copy of tokenizer_config)."""

    def __init__(self, tok: dict[str, Any], tcfg: dict[str, Any] | None, load_merges: bool, source: Path | str):
        self.sv = SpecialVocab()
        self.types = list(TYPES)
        self.tcfg = dict(tcfg) if tcfg else None
        if tok:
            if load_merges:
                self.sv.merges = _merges(tok, source)
            _normalizer(self.sv, tok.get("normalizer"))
            self._post_processor(tok)

    def _get(self, key: str) -> Any:
        return (self.tcfg or {}).get(key)

    def _post_processor(self, tok: dict[str, Any]) -> None:
        bos, cls, eos, sep = (
            self._get("bos_token"),
            self._get("cls_token"),
            self._get("eos_token"),
            self._get("sep_token"),
        )
        if not bos and cls and self.tcfg:
            self.tcfg["bos_token"] = bos = cls
        if not eos and sep and self.tcfg:
            self.tcfg["eos_token"] = eos = sep
        post = tok.get("post_processor")
        if not isinstance(post, dict):
            return
        for proc in post.get("processors", [post]) or []:
            if not isinstance(proc, dict):
                continue
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.sv.add.setdefault("bos", False)
                self.sv.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.sv.add.update(bos=True, eos=True, sep=True)
                if not cls and self.tcfg:
                    cls = self.tcfg["cls_token"] = (proc.get("cls") or [bos])[0]
                if not sep and self.tcfg:
                    sep = self.tcfg["sep_token"] = (proc.get("sep") or [eos])[0]
            elif kind == "TemplateProcessing":
                bos, cls, eos, sep = self._template(proc, bos, cls, eos, sep)

    def _template(self, proc: dict[str, Any], bos: Any, cls: Any, eos: Any, sep: Any) -> tuple:
        single, pair = proc.get("single") or [], proc.get("pair") or []
        first = last = None
        if len(single) > 1:
            if first := _special_id(single[0]):
                if not self.tcfg:
                    bos = first
                elif first not in (bos, cls):
                    if not bos:
                        self.tcfg["bos_token"] = bos = first
                    if not cls:
                        self.tcfg["cls_token"] = cls = first
                self.sv.add["bos"] = first in (bos, cls)
            if last := _special_id(single[-1]):
                if not self.tcfg:
                    eos = last
                elif last != eos:
                    for extra in ("eot", "eom"):
                        if extra not in self.types:
                            self.types.append(extra)
                            self.tcfg[f"{extra}_token"] = eos
                            break
                    self.tcfg["eos_token"] = eos = last
                self.sv.add["eos"] = last == eos
        if pair:
            start = 1 if first and _special_id(pair[0]) == first else 0
            stop = -1 if last and _special_id(pair[-1]) == last else None
            middle = pair[slice(start, stop)]
            if middle:
                a = (middle[0].get("Sequence") or {}).get("id") if isinstance(middle[0], dict) else None
                b = (middle[-1].get("Sequence") or {}).get("id") if isinstance(middle[-1], dict) else None
                if a == "A" and b == "B" and (middle := middle[1:-1]):
                    add_sep = False
                    if (entry := _special_id(middle[0])) and entry in (sep, eos) and not last:
                        add_sep = True
                    if len(middle) == 2 and (entry := _special_id(middle[1])) and entry in (sep, eos):
                        add_sep = True
                    self.sv.add["sep"] = add_sep
                    if add_sep and not sep and self.tcfg:
                        self.tcfg["sep_token"] = eos
        return bos, cls, eos, sep

    def set_id(self, typ: str, tid: Any) -> None:
        if isinstance(tid, bool) or not isinstance(tid, int) or typ in self.sv.ids:
            return
        if tid < 0:
            raise UsageError(f"special token {typ} has the negative id {tid}")
        self.sv.ids[typ] = tid

    def tokenizer_config(self, added: list[Any], template: Any) -> None:
        if not self.tcfg:
            return
        chat = self.tcfg.get("chat_template", template)
        if isinstance(chat, list):
            raise UsageError("the producer writes named chat templates under keys of its own: not reproduced")
        self.sv.chat_template = chat if isinstance(chat, str) else None
        for typ in self.types:
            flag = self.tcfg.get(f"add_{typ}_token")
            if isinstance(flag, bool) and typ not in self.sv.add:
                self.sv.add[typ] = flag
            entry = self.tcfg.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                self.set_id(
                    typ, next((a.get("id") for a in added if isinstance(a, dict) and a.get("content") == content), None)
                )


def special_vocab(
    tok: dict[str, Any], tcfg: dict[str, Any] | None, config: dict[str, Any], load_merges: bool,
    template: Any = None, source: Path | str = "tokenizer.json",
) -> SpecialVocab:  # fmt: skip
    """``SpecialVocab(path, load_merges)`` of a checkpoint with these parsed files (``template``: a
    ``chat_template.jinja`` / ``.json`` one, used where tokenizer_config.json has none)."""
    r = _Reader(tok, tcfg, load_merges, source)
    added = tok.get("added_tokens") if isinstance(tok.get("added_tokens"), list) else []
    r.tokenizer_config(added, template)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for typ in r.types:
        tid = config.get(f"{typ}_token_id")
        r.set_id(typ, tid if tid is not None else text.get(f"{typ}_token_id"))
    return r.sv
