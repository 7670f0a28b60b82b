"""The ``bitconvert`` command: parses arguments, calls the library, renders results.

Exit codes: 0 success, 1 a checkpoint problem (or a failed check), 2 a usage problem.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .errors import BitconvertError, UsageError

app = typer.Typer(
    name="bitconvert",
    help="Convert, verify and run BitNet b1.58 (ternary) checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Wide enough for tensor names when output goes to a file or pipe (rich assumes 80 columns there).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
_state = {"debug": False}


# --- shared option types ----------------------------------------------------------------------
Src = Annotated[
    Path, typer.Argument(help="Input checkpoint: a directory (HF safetensors), a file, or hf://ORG/NAME[@REV].")
]
Dst = Annotated[Path, typer.Argument(help="Output path; created only when the conversion succeeds.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Device = Annotated[str, typer.Option("--device", help="Runtime device: cpu or cuda.")]
Force = Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")]
MaxShard = Annotated[
    Optional[str], typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB. Default 5GB.")
]
LinearClassOpt = Annotated[
    Optional[str],
    typer.Option(
        "--linear-class",
        help="weight_scale convention: autobitlinear (mean|W|, multiply) or bitlinear (1/mean|W|, divide). "
        "Default: the source's, else autobitlinear.",
    ),
]
ScaleDtype = Annotated[
    Optional[str], typer.Option("--scale-dtype", help="dtype of packed weight_scale: bf16 or f32. Default bf16.")
]
DtypeOpt = Annotated[
    Optional[str], typer.Option("--dtype", help="dtype of float tensors written: bf16, f16 or f32. Default: the source's.")
]


def _version(value: bool) -> None:
    if value:
        out.print(f"bitconvert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _state["debug"] = debug


# --- helpers ----------------------------------------------------------------------------------


def parse_dtype(text: str, allowed: tuple[str, ...] = ("bf16", "f16", "f32")):
    from .formats.options import dtype_parser

    return dtype_parser("--dtype", allowed)(text)


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame):  # turn SIGTERM into an exception so staged output is cleaned up
    raise _Terminated()


@contextmanager
def _errors() -> Iterator[None]:
    """One line on stderr and the right exit code; a traceback only with --debug."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except BitconvertError as exc:
        if _state["debug"]:
            traceback.print_exc()
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code)
    except (KeyboardInterrupt, _Terminated):
        err.print("interrupted; no output was left behind", highlight=False)
        raise typer.Exit(130)
    except MemoryError:
        err.print("error: out of memory", highlight=False)
        raise typer.Exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    if not enabled or not err.is_terminal:
        yield lambda done, total, name: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("tensors", total=None)

        def update(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=name[-48:] or "done")

        yield update


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _print_conversion(result) -> None:
    d = result.to_dict()
    table = Table(show_header=False, box=None)
    table.add_row("source", f"{d['src']} ({d['src_format']})")
    table.add_row("output", f"{d['dst']} ({d['format']})")
    table.add_row("tensors", str(d["tensors"]))
    table.add_row("bytes written", f"{d['bytes_written']:,}")
    if d["ternary_sources"]:
        table.add_row("ternary weights", ", ".join(f"{v} {k}" for k, v in sorted(d["ternary_sources"].items())))
    for k, v in d["details"].items():
        table.add_row(k.replace("_", " "), str(v))
    table.add_row("files", ", ".join(d["files"]))
    table.add_row("time", f"{d['seconds']:.2f} s")
    out.print(table)
    for note in d["notes"]:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    for w in d["warnings"]:
        out.print(f"[yellow]warning:[/] {w}", highlight=False)


def run_conversion(src: Path, dst: Path, to: str, options, *, force: bool, json_out: bool) -> None:
    from .convert import convert

    with _progress(not json_out) as progress:
        result = convert(src, dst, to, options, force=force, progress=progress)
    if json_out:
        _emit_json(result.to_dict())
    else:
        _print_conversion(result)


def given_options(**values: Any) -> dict[str, Any]:
    """The write options the user actually gave (None means "not given"; pass a flag as ``flag or None``)."""
    return {k: v for k, v in values.items() if v is not None}


# --- commands ---------------------------------------------------------------------------------


@app.command()
def inspect(
    src: Src,
    json_out: JsonOut = False,
    stats: Annotated[bool, typer.Option("--stats/--no-stats", help="Load ternary weights for code statistics.")] = True,
) -> None:
    """Show a checkpoint's format, architecture, tensors, sizes and ternary statistics."""
    from .describe import describe_checkpoint

    with _errors():
        with _progress(not json_out) as progress:
            info = describe_checkpoint(src, stats=stats, progress=progress)
        if json_out:
            _emit_json(info)
            return
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


@app.command()
def pack(
    src: Src,
    dst: Dst,
    linear_class: LinearClassOpt = None,
    scale_dtype: ScaleDtype = None,
    dtype: DtypeOpt = None,
    max_shard_size: MaxShard = None,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Quantize a master (or re-pack any checkpoint) into transformers' packed 2-bit layout (hf-packed)."""
    with _errors():
        opts = given_options(
            linear_class=linear_class, dtype=dtype, scale_dtype=scale_dtype, max_shard_size=max_shard_size
        )
        run_conversion(src, dst, "hf-packed", opts, force=force, json_out=json_out)


@app.command()
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
    json_out: JsonOut = False,
) -> None:
    """Write float weights (codes x mean|W|) in the HF master layout (hf-bf16)."""
    with _errors():
        if dtype is not None and dtype not in ("bf16", "f32"):
            raise UsageError(f"--dtype must be bf16 or f32, got {dtype!r}")
        opts = given_options(dtype=dtype, max_shard_size=max_shard_size, online_exact=online_exact or None)
        run_conversion(src, dst, "hf-bf16", opts, force=force, json_out=json_out)


@app.command()
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
    tp: Annotated[Optional[str], typer.Option("--tp", help="Nanotron: tensor-parallel size to write (default 1).")] = None,
    rope_interleaved: Annotated[
        Optional[bool], typer.Option("--rope-interleaved/--no-rope-interleaved", help="Nanotron: RoPE layout.")
    ] = None,
    nanotron_version: Annotated[
        Optional[str], typer.Option("--nanotron-version", help="Nanotron checkpoint version: 1.4 (default) or 1.5.")
    ] = None,
    allow_approximate: Annotated[
        bool, typer.Option("--allow-approximate", help="Accept a conversion that cannot be exact (packed -> Nanotron).")
    ] = False,
    push_to: Annotated[
        Optional[str], typer.Option("--push-to", help="Upload the result to this Hub repo (ORG/NAME) when done.")
    ] = None,
    force: Force = False,
    json_out: JsonOut = False,
) -> None:
    """Convert SRC into any format bitconvert writes."""
    with _errors():
        opts = given_options(
            linear_class=linear_class,
            dtype=dtype,
            scale_dtype=scale_dtype,
            max_shard_size=max_shard_size,
            gguf_type=gguf_type,
            embed_type=embed_type,
            allow_fallback=allow_fallback or None,
            tp=tp,
            rope_interleaved=rope_interleaved,
            nanotron_version=nanotron_version,
            allow_approximate=allow_approximate or None,
        )
        from .formats import options_for

        opts = options_for(to, opts)  # refuses, before any work, an option that --to does not take
        if push_to:  # convert, then upload DST as one commit (cli_hub renders both)
            from .cli_hub import convert_and_push

            convert_and_push(src, dst, to, opts, push_to, force=force, json_out=json_out)
        else:
            run_conversion(src, dst, to, opts, force=force, json_out=json_out)


@app.command()
def formats() -> None:
    """List the formats bitconvert reads and writes."""
    from .formats import READERS, WRITERS, load_all

    load_all()
    for name in sorted(set(READERS) | set(WRITERS)):
        modes = "/".join(m for m, reg in (("read", READERS), ("write", WRITERS)) if name in reg)
        out.print(f"{name}\t{modes}", highlight=False)


# Commands of the later capabilities live in their own modules and register on ``app``.
from . import cli_hub, cli_runtime, cli_verify  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        # click reports usage errors with exit code 2 already; keep every other code as it is
        raise exc


if __name__ == "__main__":
    main()
