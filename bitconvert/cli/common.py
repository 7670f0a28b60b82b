"""What every command shares: option types, output helpers, and the one error boundary.

Exit codes: 0 success, 1 a checkpoint problem (or a failed check, or an OS error such as a full disk),
2 a usage problem, 3 an internal error (a bug: please report it with the ``--debug`` traceback),
130 interrupted.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import BitconvertError, UsageError
from ..formats.options import FLOAT_CHOICES, dtype_parser

#: exit code of an error bitconvert did not expect (a bug), distinct from 1 (bad input) and 2 (bad usage)
INTERNAL_ERROR_EXIT = 3
INTERRUPTED_EXIT = 130

# Wide enough for tensor names when output goes to a file or pipe (rich assumes 80 columns there).
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
#: set by the root callback (``--debug``), read by the error boundary
state = {"debug": False}


# --- shared option types (the write options are generated: see options.py) ---------------------
Src = Annotated[
    Path,
    typer.Argument(
        metavar="SRC", help="Input checkpoint: a directory (HF safetensors), a file, or hf://ORG/NAME\\[@REV].",
        readable=False,  # bitconvert says in one line what it cannot read (click would print a usage box)
    ),
]
Dst = Annotated[Path, typer.Argument(metavar="DST", help="Output path; created only when the conversion succeeds.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Device = Annotated[str, typer.Option("--device", help="Runtime device: cpu or cuda.")]
Force = Annotated[bool, typer.Option("--force", help="Replace DST if it exists.")]
HashSources = Annotated[
    bool,
    typer.Option(
        "--hash-sources",
        help="Record the sha256 of every local source file in the provenance (reads the source once more; "
        "Hub sources are recorded with their sha256 anyway).",
    ),
]


# --- parsing ----------------------------------------------------------------------------------


def parse_dtype(text: str, allowed: tuple[str, ...] = FLOAT_CHOICES) -> str:
    """``bf16`` -> ``"BF16"``: a float dtype as typed, to its name (a usage error names the ones allowed)."""
    return dtype_parser("--dtype", allowed)(text)


def parse_tokens(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; a usage error names the piece that is not a token id."""
    ids = []
    for piece in text.replace(" ", "").split(","):
        if not piece:
            continue
        if not piece.isdigit():
            raise UsageError(f"--tokens takes comma-separated non-negative integers; {piece!r} is not one")
        ids.append(int(piece))
    if not ids:
        raise UsageError("--tokens is empty; give e.g. --tokens 1,2,3")
    return ids


# --- the error boundary -----------------------------------------------------------------------


class Terminated(Exception):
    """SIGTERM, raised as an exception so that staged output is cleaned up on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


#: control characters (a newline in a path would split the one error line) shown as escapes
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _fail(message: str, code: int, label: str = "error") -> typer.Exit:
    """Print ``label: message`` as one line (the label in red on a terminal); the exit to raise."""
    if state["debug"]:
        traceback.print_exc()
    message = message.translate(_CONTROL)
    line = Text.assemble((f"{label}:", "bold red"), " ", message) if label else Text(message)
    err.print(line, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` (both paths for a rename or link), whatever the call that failed."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


@contextmanager
def error_boundary() -> Iterator[None]:
    """One line on stderr and the documented exit code, whatever went wrong; a traceback only with --debug."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise  # typer's own exits and usage errors (its click is vendored) already carry their code
    except BitconvertError as exc:
        raise _fail(str(exc), exc.exit_code) from None
    except (KeyboardInterrupt, Terminated):
        raise _fail("interrupted; no output was left behind", INTERRUPTED_EXIT, label="") from None
    except MemoryError:
        raise _fail("out of memory", 1) from None
    except OSError as exc:
        raise _fail(os_error_line(exc), 1) from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise _fail(
            f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)",
            INTERNAL_ERROR_EXIT,
            label="internal error",
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def guarded(command: Callable) -> Callable:
    """``command`` run inside :func:`error_boundary` (the app registers every command through this)."""

    @functools.wraps(command)  # keeps the signature and annotations that typer reads
    def run(*args, **kwargs):
        with error_boundary():
            return command(*args, **kwargs)

    return run


# --- output -----------------------------------------------------------------------------------


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A progress callback: a bar on a terminal, nothing otherwise."""
    if not enabled or not err.is_terminal:
        yield lambda done, total, name: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_conversion(result) -> None:
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


def run_conversion(
    src: Path, dst: Path, to: str, options, *, force: bool, json_out: bool, hash_sources: bool = False
) -> None:
    from ..convert import convert

    with progress_bar(not json_out) as progress:
        result = convert(src, dst, to, options, force=force, progress=progress, hash_sources=hash_sources)
    if json_out:
        emit_json(result.to_dict())
    else:
        print_conversion(result)
