"""Conversion commands: inspect, pack, unpack, convert, formats.

The write options of ``pack`` (hf-packed), ``unpack`` (hf-bf16) and ``convert`` (every writer) are
generated from the writers' option dataclasses by :func:`.options.takes_write_options`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional

import typer
from rich.table import Table

from ..formats import OPTIONS, writer_names
from .common import Dst, Force, HashSources, JsonOut, Src, emit_json, out, progress_bar, run_conversion
from .options import given, takes_write_options

#: ``--to``: one of the formats bitconvert writes (listed in --help, offered by shell completion)
To = Annotated[
    Literal.__getitem__(tuple(writer_names())),
    typer.Option("--to", help="Output format (see `bitconvert formats`).", case_sensitive=False),
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
    if info.get("kernel_config"):
        out.print(f"TL kernel configuration: {info['kernel_config']}", highlight=False)
    if info.get("i2s_layout"):
        out.print(f"I2_S layout: {info['i2s_layout']}", highlight=False)
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


@takes_write_options("hf-packed")
def pack(
    src: Src, dst: Dst, force: Force = False, hash_sources: HashSources = False, json_out: JsonOut = False, **options: Any
) -> None:
    """Quantize a master (or re-pack any checkpoint) into transformers' packed 2-bit layout (hf-packed)."""
    run_conversion(src, dst, "hf-packed", given(options), force=force, json_out=json_out, hash_sources=hash_sources)


@takes_write_options("hf-bf16")
def unpack(
    src: Src, dst: Dst, force: Force = False, hash_sources: HashSources = False, json_out: JsonOut = False, **options: Any
) -> None:
    """Write float weights (codes x mean|W|) in the HF master layout (hf-bf16)."""
    run_conversion(src, dst, "hf-bf16", given(options), force=force, json_out=json_out, hash_sources=hash_sources)


@takes_write_options(*OPTIONS)
def convert(
    src: Src,
    dst: Dst,
    to: To,
    push_to: Annotated[
        Optional[str], typer.Option("--push-to", help="Upload the result to this Hub repo (ORG/NAME) when done.")
    ] = None,
    force: Force = False,
    hash_sources: HashSources = False,
    json_out: JsonOut = False,
    **options: Any,
) -> None:
    """Convert SRC into any format bitconvert writes."""
    from ..formats import options_for

    opts = options_for(to, given(options))  # refuses, before any work, an option that --to does not take
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
