"""Text in and out: the checkpoint's ``tokenizer.json`` (tokenizers library) and its chat template.

The chat template is rendered the way transformers' ``apply_chat_template`` does: a sandboxed
Jinja environment with ``trim_blocks``/``lstrip_blocks``, the special tokens as variables, and the
result encoded without adding special tokens again (the template writes them).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io.jsonfile import read_json_object
from ..model.checkpoint import Checkpoint

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as strings or as AddedToken objects
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class TextTokenizer:
    def __init__(self, tokenizer_path: Path, config: dict[str, Any], chat_template: str | None) -> None:
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise CheckpointError(tokenizer_path, f"the tokenizers library cannot load it: {exc}") from None
        self.path = tokenizer_path
        self.config = config
        self.chat_template = chat_template
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "TextTokenizer | None":
        """The checkpoint's tokenizer, or None when it ships no ``tokenizer.json``."""
        files = {p.name: p for p in ckpt.side_files}
        if TOKENIZER_FILE not in files:
            return None
        config = read_json_object(files[TOKENIZER_CONFIG]) if TOKENIZER_CONFIG in files else {}
        template = None
        if TEMPLATE_FILE in files:
            template = files[TEMPLATE_FILE].read_text(encoding="utf-8")
        else:
            raw = config.get("chat_template")
            if isinstance(raw, list):  # named templates: transformers uses "default"
                named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
                raw = named.get("default")
            template = raw if isinstance(raw, str) else None
        return cls(files[TOKENIZER_FILE], config, template)

    def render_chat(self, prompt: str) -> str:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys=False):
            # transformers' own tojson: keeps non-ASCII text as it is
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        specials = {k: _token_text(v) for k, v in self.config.items() if k.endswith("_token") and _token_text(v)}
        try:
            return env.from_string(self.chat_template or "").render(
                messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, **specials
            )
        except TemplateError as exc:
            raise CheckpointError(self.path.parent / TOKENIZER_CONFIG, f"chat template failed: {exc}") from None

    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids for ``prompt``: through the chat template when there is one and ``chat``."""
        if chat and self.chat_template:
            return self.tokenizer.encode(self.render_chat(prompt), add_special_tokens=False).ids
        ids = self.tokenizer.encode(prompt, add_special_tokens=True).ids
        bos = self.tokenizer.token_to_id(self.bos_token) if self.bos_token else None
        # Llama-style configs ask for a BOS the tokenizer.json post-processor may not add itself.
        if self.config.get("add_bos_token") and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def special_ids(self) -> set[int]:
        """The ids of the tokenizer's special added tokens (``<|endoftext|>``, ``<eos>``, ...)."""
        return {i for i, tok in self.tokenizer.get_added_tokens_decoder().items() if tok.special}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def stop_token_ids(ckpt: Checkpoint, tokenizer: TextTokenizer | None = None) -> set[int]:
    """End-of-sequence ids: generation_config.json's, config.json's and the tokenizer's eos token."""
    ids = set(_ids(ckpt.config.eos_token_id))
    files = {p.name: p for p in ckpt.side_files}
    if GENERATION_CONFIG in files:
        ids |= set(_ids(read_json_object(files[GENERATION_CONFIG]).get("eos_token_id")))
    if tokenizer is not None and tokenizer.eos_token:
        eos = tokenizer.tokenizer.token_to_id(tokenizer.eos_token)
        if eos is not None:
            ids.add(eos)
    return ids
