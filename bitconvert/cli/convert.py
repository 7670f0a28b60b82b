"""Conversion commands: inspect, pack, unpack, convert, formats."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import UsageError
from .common import (
    Dst,
    DtypeOpt,
    Force,
    HashSources,
    JsonOut,
    LinearClassOpt,
    MaxShard,
    ScaleDtype,
    Src,
    emit_json,
    given_options,
    out,
    progress_bar,
    run_conversion,
)

RecipeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--recipe",
        help="Quantize a master as this producer does, bit for bit: transformers (default), onebitllms "
        "(hf-packed), llama.cpp (gguf tq1_0/tq2_0), bitnet.cpp (gguf i2_s).",
    ),
]

def inspect(
    src: Src,
    json_out: JsonOut = False,
    stats: Annotated[bool, typer.Option("--stats/--no-stats", help="Load ternary weights for code statistics.")] = True,
) -> None:
    """Show a checkpoint's format, architecture, tensors, sizes and ternary statistics."""
    from ..describe import describe_checkpoint

    with progress_bar(not json_out) as progress:
        info = describe_checkpoint(src, stats=stats, progress=progress)
    if json_out:
        emit_json(info)
    else:
        print_inspection(info)


def print_inspection(info: dict) -> None:
    cfg = info["config"]
    out.print(f"[bold]{info['path']}[/]: {info['format']}, architecture {info['architecture']}", highlight=False)
    out.print(
        f"hidden {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, layers {cfg['num_hidden_layers']}, "
        f"heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, vocab {cfg['vocab_size']}, "
        f"act {cfg['hidden_act']}, tied {cfg['tie_word_embeddings']}",
        highlight=False,
    )
    q = cfg["quantization"]
    out.print(f"quantization: {json.dumps(q) if q else 'none'}", highlight=False)
    out.print(f"{len(info['files'])} weight file(s), {info['bytes_on_disk']:,} bytes; side files: "
              f"{', '.join(info['side_files']) or 'none'}", highlight=False)
    table = Table()
    table.add_column("tensor", overflow="fold")
    for col in ("shape", "stored", "codes -1/0/+1", "scale"):
        table.add_column(col, overflow="fold")
    for r in info["tensors"]:
        codes = r.get("codes")
        scale = r.get("scale")
        table.add_row(
            r["name"],
            "x".join(map(str, r["shape"])),
            r["stored"],
            f"{codes['minus']:.3f}/{codes['zero']:.3f}/{codes['plus']:.3f}" if codes else "",
            f"{scale['value']:.6g} ({scale['linear_class']})" if scale else "",
        )
    out.print(table)
    for note in info["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    for warning in info["warnings"]:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)


def pack(
    src: Src,
    dst: Dst,
    linear_class: LinearClassOpt = None,
    scale_dtype: ScaleDtype = None,
    dtype: DtypeOpt = None,
    max_shard_size: MaxShard = None,
    recipe: RecipeOpt = None,
    force: Force = False,
    hash_sources: HashSources = False,
    json_out: JsonOut = False,
) -> None:
    """Quantize a master (or re-pack any checkpoint) into transformers' packed 2-bit layout (hf-packed)."""
    opts = given_options(
        linear_class=linear_class, dtype=dtype, scale_dtype=scale_dtype, max_shard_size=max_shard_size, recipe=recipe
    )
    run_conversion(src, dst, "hf-packed", opts, force=force, json_out=json_out, hash_sources=hash_sources)


def unpack(
    src: Src,
    dst: Dst,
    dtype: Annotated[
        Optional[str], typer.Option("--dtype", help="dtype of the written weights: bf16 or f32. Default: the source's.")
    ] = None,
    online_exact: Annotated[
        bool,
        typer.Option(
            "--online-exact",
            help="Write codes x mean|W|/p (p: non-zero fraction), so that online quantization "
            "(transformers' online mode) gives back the packed layer instead of scaling it by p.",
        ),
    ] = False,
    max_shard_size: MaxShard = None,
    force: Force = False,
    hash_sources: HashSources = False,
    json_out: JsonOut = False,
) -> None:
    """Write float weights (codes x mean|W|) in the HF master layout (hf-bf16)."""
    if dtype is not None and dtype not in ("bf16", "f32"):
        raise UsageError(f"--dtype must be bf16 or f32, got {dtype!r}")
    opts = given_options(dtype=dtype, max_shard_size=max_shard_size, online_exact=online_exact or None)
    run_conversion(src, dst, "hf-bf16", opts, force=force, json_out=json_out, hash_sources=hash_sources)


def convert(
    src: Src,
    dst: Dst,
    to: Annotated[str, typer.Option("--to", help="Output format (see `bitconvert formats`).")],
    linear_class: LinearClassOpt = None,
    scale_dtype: ScaleDtype = None,
    dtype: DtypeOpt = None,
    max_shard_size: MaxShard = None,
    gguf_type: Annotated[
        Optional[str], typer.Option("--gguf-type", help="GGUF weight type: tq2_0 (default), tq1_0, i2_s, f16, bf16, f32.")
    ] = None,
    embed_type: Annotated[
        Optional[str], typer.Option("--embed-type", help="GGUF token_embd type: f16 (default), bf16, f32, q8_0.")
    ] = None,
    allow_fallback: Annotated[
        bool, typer.Option("--allow-fallback", help="GGUF: write tensors a ternary type cannot hold as F16.")
    ] = False,
    no_tokenizer: Annotated[
        bool, typer.Option("--no-tokenizer", help="GGUF: write no tokenizer (else an unreadable one is an error).")
    ] = False,
    recipe: RecipeOpt = None,
    i2s_layout: Annotated[
        Optional[str],
        typer.Option("--i2s-layout", help="GGUF i2_s byte layout (bitnet.cpp build): x86 (default), x86-rows, arm."),
    ] = None,
    tp: Annotated[Optional[str], typer.Option("--tp", help="Nanotron: tensor-parallel size to write (default 1).")] = None,
    rope_interleaved: Annotated[
        Optional[bool], typer.Option("--rope-interleaved/--no-rope-interleaved", help="Nanotron: RoPE layout.")
    ] = None,
    nanotron_version: Annotated[
        Optional[str],
        typer.Option("--nanotron-version", help="Nanotron checkpoint version: 1.4 or 1.5 (default: the flavor's)."),
    ] = None,
    allow_approximate: Annotated[
        bool, typer.Option("--allow-approximate", help="Accept a conversion that cannot be exact (packed -> Nanotron).")
    ] = False,
    nanotron_flavor: Annotated[
        Optional[str],
        typer.Option("--nanotron-flavor", help="Nanotron code to load it: pr180 (BitNet PR head, default), pr178, main."),
    ] = None,
    allow_lossy: Annotated[
        bool, typer.Option("--allow-lossy", help="Convert although the target cannot hold all of the model (warns).")
    ] = False,
    push_to: Annotated[
        Optional[str], typer.Option("--push-to", help="Upload the result to this Hub repo (ORG/NAME) when done.")
    ] = None,
    force: Force = False,
    hash_sources: HashSources = False,
    json_out: JsonOut = False,
) -> None:
    """Convert SRC into any format bitconvert writes."""
    opts = given_options(
        linear_class=linear_class,
        dtype=dtype,
        scale_dtype=scale_dtype,
        max_shard_size=max_shard_size,
        gguf_type=gguf_type,
        embed_type=embed_type,
        allow_fallback=allow_fallback or None,
        no_tokenizer=no_tokenizer or None,
        recipe=recipe,
        i2s_layout=i2s_layout,
        tp=tp,
        rope_interleaved=rope_interleaved,
        nanotron_version=nanotron_version,
        allow_approximate=allow_approximate or None,
        flavor=nanotron_flavor,
        allow_lossy=allow_lossy or None,
    )
    from ..formats import options_for

    opts = options_for(to, opts)  # refuses, before any work, an option that --to does not take
    if push_to:  # convert, then upload DST as one commit (cli/upload.py renders both)
        from .upload import convert_and_push

        convert_and_push(src, dst, to, opts, push_to, force=force, json_out=json_out, hash_sources=hash_sources)
    else:
        run_conversion(src, dst, to, opts, force=force, json_out=json_out, hash_sources=hash_sources)


def formats() -> None:
    """List the formats bitconvert reads and writes."""
    from ..formats import CATALOGUE, modes

    for name in sorted(CATALOGUE):
        out.print(f"{name}\t{modes(name)}", highlight=False)
