"""`run` and `logits`: the reference PyTorch runtime from the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from ..errors import UsageError
from ..extras import require
from .common import Device, Force, JsonOut, Src, emit_json, err, out, parse_dtype, parse_tokens, progress_bar

COMPUTE_DTYPES = ("f32", "bf16", "f16")
ComputeDtype = Annotated[
    Literal[COMPUTE_DTYPES],
    typer.Option("--dtype", help="Compute dtype of activations and dense weights.", case_sensitive=False),
]


def _compute_dtype(text: str):
    return parse_dtype(text, COMPUTE_DTYPES)


def run(
    src: Src,
    prompt: Annotated[
        Optional[str], typer.Option("--prompt", help="Text to continue (through the chat template).")
    ] = None,
    tokens: Annotated[
        Optional[str], typer.Option("--tokens", help="Prompt as token ids, e.g. 1,2,3 (bypasses the tokenizer).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 for greedy; above 0 samples.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler.")] = 0,
    chat: Annotated[
        bool, typer.Option("--chat/--no-chat", help="Wrap --prompt in the checkpoint's chat template, if it has one.")
    ] = True,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at end-of-sequence tokens.")] = False,
    device: Device = "cpu",
    dtype: ComputeDtype = "f32",
    json_out: JsonOut = False,
) -> None:
    """Generate text (or token ids) with the reference runtime, from any format bitconvert reads."""
    from ..formats import open_checkpoint

    if (prompt is None) == (tokens is None):
        raise UsageError("give exactly one of --prompt TEXT or --tokens 1,2,3")
    compute_dtype = _compute_dtype(dtype)
    require("runtime", "bitconvert run")
    from ..model.families import CAUSAL_LM
    from ..runtime import Generation, TextTokenizer, load_model, stop_token_ids
    from ..runtime.model import refuse_unless

    ids = parse_tokens(tokens) if tokens is not None else None
    ckpt = open_checkpoint(src)
    refuse_unless(ckpt.config, CAUSAL_LM, src)  # an embedding model generates nothing
    tok = TextTokenizer.from_checkpoint(ckpt)
    if ids is None:
        if tok is None:
            raise UsageError(f"{src} has no tokenizer.json; give the prompt as --tokens 1,2,3")
        ids = tok.encode_prompt(prompt or "", chat=chat)
    stops = set() if ignore_eos else stop_token_ids(ckpt, tok)
    with progress_bar(not json_out) as progress:
        model = load_model(ckpt, device, compute_dtype, progress=progress)
    gen = Generation(
        model, ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, stop_tokens=stops
    )
    _generate(gen, tok, stream_text=prompt is not None and not json_out)
    _report(src, ids, gen, tok, tokens_only=prompt is None, json_out=json_out)


def _generate(gen, tok, *, stream_text: bool) -> None:
    """Run the generation, printing the text as it grows when a person reads it."""
    shown = ""
    for _ in gen:
        if stream_text:
            shown = _stream(tok, gen.tokens, shown)
    if stream_text:
        text = tok.decode(gen.tokens)
        sys.stdout.write(text[len(shown):] + "\n")
        sys.stdout.flush()


def _report(src, ids: list[int], gen, tok, *, tokens_only: bool, json_out: bool) -> None:
    result = {
        "src": str(src),
        "prompt_tokens": ids,
        "tokens": gen.tokens,
        "text": tok.decode(gen.tokens) if tok is not None else None,
        "stopped_by": gen.stopped_by,
        "prefill_tokens_per_second": gen.prefill_tokens_per_second,
        "decode_tokens_per_second": gen.decode_tokens_per_second,
    }
    if json_out:
        emit_json(result)
        return
    if tokens_only:
        out.print(",".join(map(str, gen.tokens)), highlight=False)
    rates = []
    if gen.prefill_tokens_per_second:
        rates.append(f"prefill {len(ids)} tokens at {gen.prefill_tokens_per_second:.1f} tok/s")
    if gen.decode_tokens_per_second:
        rates.append(f"decode {len(gen.tokens) - 1} tokens at {gen.decode_tokens_per_second:.1f} tok/s")
    err.print(f"[dim]{'; '.join(rates) or 'no tokens generated'} ({gen.stopped_by})[/]", highlight=False)


def _stream(tok, ids: list[int], shown: str) -> str:
    text = tok.decode(ids)
    # a byte-level token may end inside a UTF-8 character: wait for the rest before printing
    if text.endswith("\ufffd") or not text.startswith(shown):
        return shown
    sys.stdout.write(text[len(shown):])
    sys.stdout.flush()
    return text


def logits(
    src: Src,
    tokens: Annotated[str, typer.Option("--tokens", help="Token ids, e.g. 1,2,3.")],
    out_path: Annotated[
        Path, typer.Option("--out", metavar="FILE.npy", help="Where to write float32 logits [T, vocab].")
    ],
    device: Device = "cpu",
    dtype: ComputeDtype = "f32",
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Write the reference runtime's float32 logits [T, vocab] for --tokens to a .npy file."""
    from ..io.staging import check_output, staged_output

    ids = parse_tokens(tokens)
    compute_dtype = _compute_dtype(dtype)
    check_output(out_path, force=force, what="logits file")
    require("runtime", "bitconvert logits")
    import numpy as np

    from ..formats import open_checkpoint
    from ..model.families import CAUSAL_LM
    from ..runtime import load_model
    from ..runtime.model import refuse_unless

    ckpt = open_checkpoint(src)
    refuse_unless(ckpt.config, CAUSAL_LM, src)  # an embedding model has no next-token logits
    with progress_bar(not json_out) as progress:
        model = load_model(ckpt, device, compute_dtype, progress=progress)
    result = model.logits(ids).numpy()
    with staged_output(out_path, directory=False, force=force) as tmp:
        with open(tmp, "xb") as f:
            np.save(f, result)
    info = {
        "src": str(src),
        "out": str(out_path),
        "shape": list(result.shape),
        "dtype": "float32",
        "argmax": result.argmax(-1).tolist(),
    }
    if json_out:
        emit_json(info)
    else:
        out.print(f"wrote {out_path}: float32 {result.shape[0]} x {result.shape[1]}; "
                  f"top tokens {','.join(map(str, info['argmax']))}", highlight=False)
