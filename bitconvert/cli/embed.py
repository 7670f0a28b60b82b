"""`embed`: sentence embeddings of an embedding model with the reference runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..extras import require
from .common import Device, Force, JsonOut, Src, emit_json, err, out, parse_tokens, progress_bar
from .runtime import ComputeDtype, _compute_dtype


def embed(
    src: Src,
    texts: Annotated[
        Optional[list[str]], typer.Option("--text", help="A text to embed (repeat for several).")
    ] = None,
    tokens: Annotated[
        Optional[list[str]],
        typer.Option("--tokens", help="Token ids to embed as given, e.g. 2,17,1 (repeatable; bypasses the tokenizer)."),
    ] = None,
    prompt_name: Annotated[
        Optional[str],
        typer.Option("--prompt-name", help="Prepend this prompt of config_sentence_transformers.json (e.g. query)."),
    ] = None,
    out_path: Annotated[
        Optional[Path], typer.Option("--out", metavar="FILE.npy", help="Also write the float32 [N, dim] vectors here.")
    ] = None,
    device: Device = "cpu",
    dtype: ComputeDtype = "f32",
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Embed texts with an embedding model (BitNet Embeddings), pooled and normalized as its
    sentence-transformers files say, from any format bitconvert reads."""
    if not texts and not tokens:
        raise UsageError("give at least one --text TEXT or --tokens 1,2,3")
    token_lists = [parse_tokens(t) for t in tokens or ()]
    compute_dtype = _compute_dtype(dtype)
    if out_path is not None:
        from ..io.staging import check_output

        check_output(out_path, force=force, what="embeddings file")
    require("runtime", "bitconvert embed")
    import numpy as np

    from ..runtime.embed import load_embedder

    with progress_bar(not json_out) as progress:
        embedder = load_embedder(src, device, compute_dtype, progress=progress)
    results = embedder.embed(texts or (), token_lists, prompt_name)
    vectors = np.stack([r.vector for r in results])
    if out_path is not None:
        from ..io.staging import staged_output

        with staged_output(out_path, directory=False, force=force) as tmp, open(tmp, "xb") as f:
            np.save(f, vectors)
    if json_out:
        emit_json({
            "src": str(src),
            "pooling": embedder.pooling,
            "normalized": embedder.setup.normalize,
            "prompt_name": prompt_name,
            "dimension": int(vectors.shape[1]),
            "out": str(out_path) if out_path is not None else None,
            "notes": embedder.notes,
            "embeddings": [
                {"text": r.text, "tokens": r.tokens, "embedding": [float(x) for x in r.vector]} for r in results
            ],
        })  # fmt: skip
        return
    for r in results:
        head = ", ".join(f"{x:+.4f}" for x in r.vector[:4])
        label = repr(r.text) if r.text is not None else ",".join(map(str, r.tokens))
        out.print(f"{label}: [{head}, ...] ({r.vector.size} values, {len(r.tokens)} tokens)", highlight=False)
    if out_path is not None:
        out.print(f"wrote {out_path}: float32 {vectors.shape[0]} x {vectors.shape[1]}", highlight=False)
    for note in embedder.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
