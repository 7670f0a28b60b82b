"""``verify SRC --against REF --embeddings``: the sentence embeddings of two embedding models compared.

Both models embed the same fixed texts (tokenized once, by REF's tokenizer where it has one, else
SRC's; without any tokenizer, fixed token sequences) with the reference runtime, pooled and
normalized as each checkpoint's side files say, and each text's cosine is held to a limit.

REF runs with the weights as SRC's format holds them: a master's latent linears quantized and
their scales re-expressed in SRC's convention and dtype (as ``--logits`` does) or, where SRC holds
them as floats (an F16/F32 GGUF), written as the floats a conversion writes (codes x mean|W| in
SRC's dtype, both then quantized on load alike); and REF's dense tensors (embeddings, norms) cast to
the dtype SRC stores each in. What the format holds is thereby taken out of the comparison: an
exact conversion runs on equal values in the same float32 arithmetic (measured: equal vectors,
1 - cosine below 1e-15), and the limit is that arithmetic's, ``1 - 1e-6``, not a tolerance for
the format. A text below it means SRC computes something REF does not: a changed code, scale or
value (the tensor checks name which) or attention settings the tensors cannot show (named).
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError
from ..model.checkpoint import Checkpoint, Kind
from ..model.families import EMBEDDING_TASK
from .as_stored import as_stored_by, default_tokens, dense_as_stored_by, floats_as_stored_by
from .report import Check, VerifyReport

#: the texts both models embed: short and long, punctuation, digits, non-ASCII
TEXTS = (
    "What is BitNet?",
    "Ternary weights take 1.58 bits each, and activations eight.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Größe, naïve café: ÅÉÎÕÜ — 東京 2026",
)
#: the cosine limit: float32 arithmetic on equal weights (what SRC's format holds is given to REF too)
MIN_COSINE = 1 - 1e-6


def _inputs(a: Checkpoint, b: Checkpoint) -> tuple[list[list[int]], str]:
    """Token ids of the fixed texts by REF's tokenizer (else SRC's), or fixed sequences without one."""
    from ..runtime.embed import Embedder, embedding_setup
    from ..runtime.tokenizer import TextTokenizer

    for who, ckpt in (("REF", b), ("SRC", a)):
        tokenizer = TextTokenizer.from_checkpoint(ckpt)
        if tokenizer is not None:  # encoding needs the side files and the tokenizer, not the weights
            encoder = Embedder(None, embedding_setup(ckpt), tokenizer, str(ckpt.path))  # type: ignore[arg-type]
            return [encoder.encode(t) for t in TEXTS], f"{len(TEXTS)} fixed texts, tokenized by {who}'s tokenizer"
    return [default_tokens(a.config.vocab_size, 16 + i) for i in range(len(TEXTS))], (
        f"{len(TEXTS)} fixed token sequences (neither model has a tokenizer.json)"
    )


def _embeddings(ckpt: Checkpoint, ids: list[list[int]], device: str) -> np.ndarray:
    from ..runtime.embed import load_embedder

    embedder = load_embedder(ckpt, device)
    return np.stack([embedder.embed_tokens(t) for t in ids]).astype(np.float64)


def embedding_checks(a: Checkpoint, b: Checkpoint, report: VerifyReport, device: str = "cpu",
                     min_cosine: float | None = None) -> None:  # fmt: skip
    """Add the ``embeddings`` check (the lowest cosine of SRC's embedding to REF's over the texts)."""
    for role, ckpt in (("src", a), ("ref", b)):
        if ckpt.config.family.task != EMBEDDING_TASK:
            report.add(Check("embeddings", False, f"{role} is {ckpt.config.family.title}, not an embedding model: "
                                                  "compare it with --logits"))  # fmt: skip
            return
    floats = holds_floats(a)
    b_run = as_stored_by(b, a)
    b_run, casts = dense_as_stored_by(floats_as_stored_by(b_run, a) if floats else b_run, a)
    limit = min_cosine if min_cosine is not None else MIN_COSINE
    try:
        ids, what = _inputs(a, b)
        va = _embeddings(a, ids, device)  # one model resident at a time
        vb = _embeddings(b_run, ids, device)
    except CheckpointError as exc:
        report.add(Check("embeddings", False, f"{exc.path}: {exc.problem}", exc.tensor))
        return
    norms = np.linalg.norm(va, axis=-1) * np.linalg.norm(vb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (va * vb).sum(-1) / norms
    cos = np.where(np.isfinite(cos), cos, -np.inf)
    worst = float(cos.min())
    basis = "REF runs with the weights as SRC holds them" + (f" (dense {', '.join(casts)})" if casts else "")
    held = "floats quantized on load" if floats else "codes and scales"
    why = "" if worst >= limit else (
        f"; the limit {limit:.7g} is float32 arithmetic on equal weights (REF ran with the weights as SRC holds "
        f"them, its linears as {held}): "
        f"SRC computes another model than REF ({_attention_differences(a, b) or 'see the tensor checks'})"
    )  # fmt: skip
    report.add(Check("embeddings", worst >= limit,
                     f"lowest cosine over {what} (text {int(cos.argmin())}); {basis}{why}", None, worst, limit))
    report.figures["embedding_cosines"] = [float(c) for c in cos]
    report.figures["embedding_tokens"] = ids


#: config fields that change what attention computes, which the tensor checks cannot show
ATTENTION_FIELDS = ("layer_types", "sliding_window", "rope_local_theta", "query_pre_attn_scalar", "bidirectional")


def _attention_differences(a: Checkpoint, b: Checkpoint) -> str:
    diffs = [f"{f}: src {getattr(a.config, f)!r:.60}, ref {getattr(b.config, f)!r:.60}" for f in ATTENTION_FIELDS
             if getattr(a.config, f) != getattr(b.config, f)]  # fmt: skip
    return "; ".join(diffs) + ("; and see the tensor checks" if diffs else "")


def holds_floats(src: Checkpoint) -> bool:
    """Whether SRC holds a quantized linear as floats the runtime quantizes on load (an F16 GGUF, unpack output)."""
    return any(e.kind is Kind.LATENT for n, e in src.tensors.items() if src.is_quantized_linear(n))
