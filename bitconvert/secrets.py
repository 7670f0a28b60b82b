"""Secrets out of text: the Hub token, wherever bitconvert shows or writes text that could hold it.

Imports nothing else of bitconvert, so that provenance, the model card and the Hub modules can all use it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def _known_tokens() -> list[str]:
    """The tokens the client may send: HF_TOKEN (or its old name) and the saved token file.

    Read directly, not with ``huggingface_hub.get_token()``, which may exchange or refresh a token
    over the network (OIDC, OAuth) -- scrubbing must never cause a request.
    """
    found = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import constants

        text = Path(constants.HF_TOKEN_PATH).read_text(encoding="utf-8", errors="replace")
        found += [text.strip(), *re.findall(r'"([^"\s]{16,})"', text)]  # plain token, or tokens inside JSON
    except (OSError, ImportError, AttributeError):
        pass
    return sorted({t.strip() for t in found if t and len(t.strip()) >= 8}, key=len, reverse=True)


# Shapes of secrets even when their value is unknown here (an OIDC token, a header echoed back).
_SECRET_SHAPES = [(re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_***"), (re.compile(r"(?i)\bBearer\s+\S+"), "Bearer ***")]


def scrub_secrets(text: str) -> str:
    """``text`` without the Hub token: known token values and token-shaped strings become ``***``."""
    for token in _known_tokens():
        text = text.replace(token, "***")
    for shape, replacement in _SECRET_SHAPES:
        text = shape.sub(replacement, text)
    return text


def one_line(text: str) -> str:
    return scrub_secrets(" ".join(str(text).split()))

