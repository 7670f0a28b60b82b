"""What every command shares: option types, output helpers, and the one error boundary.

Exit codes: 0 success, 1 a checkpoint problem (or a failed check, or an OS error such as a full disk),
2 a usage problem, 3 an internal error (a bug: please report it with the ``--debug`` traceback),
130 interrupted.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import re
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Sequence

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import SCHEMA_VERSION
from ..errors import BitconvertError, UsageError
from ..formats.options import FLOAT_CHOICES, dtype_parser

#: exit code of an error bitconvert did not expect (a bug), distinct from 1 (bad input) and 2 (bad usage)
INTERNAL_ERROR_EXIT = 3
INTERRUPTED_EXIT = 130



class _WholeLines:
    """Standard output for rich when it is not a terminal: each line ends where its text ends.

    rich pads every table cell to its column's width; in a file or pipe that leaves trailing blanks
    that scripts and diffs trip on. Complete lines are written with trailing spaces removed; a line
    still being written waits for its end (or a flush)."""

    def __init__(self) -> None:
        self._pending = ""

    def write(self, text: str) -> int:
        *lines, self._pending = (self._pending + text).split("\n")
        if lines:
            sys.stdout.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            sys.stdout.write(self._pending)
            self._pending = ""
        sys.stdout.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(sys.stdout, "encoding", None) or "utf-8"


_STDOUT_IS_TERMINAL = sys.stdout.isatty()
# Requested output (tables, results). Wide enough for tensor names in a file or pipe (rich assumes 80
# columns there), and never padded there.
out = Console(width=None, soft_wrap=False) if _STDOUT_IS_TERMINAL else Console(file=_WholeLines(), width=160)
# Errors, notes, warnings and progress. soft_wrap: a line is never cut into pieces, whatever the width.
err = Console(stderr=True, soft_wrap=True)
#: set by the root callback (``--debug``, ``--quiet``) or a command's own ``--quiet``; read by the
#: error boundary and by :func:`say`
state = {"debug": False, "quiet": False}


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


def fail_line(message: str, label: str = "error") -> None:
    """Print ``label: message`` as one line on stderr (the label in red on a terminal)."""
    message = message.translate(_CONTROL)
    line = Text.assemble((f"{label}:", "bold red"), " ", message) if label else Text(message)
    err.print(line, highlight=False, soft_wrap=True)


def _fail(message: str, code: int, label: str = "error") -> typer.Exit:
    """:func:`fail_line` (after the traceback with --debug); the exit to raise."""
    if state["debug"]:
        traceback.print_exc()
    fail_line(message, label)
    return typer.Exit(code)


#: how typer words a value outside an option's choices
_NOT_ONE_OF = re.compile(r"Value error, '(?P<value>[^']*)' is not one of (?P<choices>.*?)\.?$")


def usage_error_line(message: str) -> str:
    """typer's usage message as one line; a value outside an option's choices gets the closest
    choices as a suggestion (``--to ggfu``: did you mean 'gguf'?)."""
    message = " ".join(message.split())
    found = _NOT_ONE_OF.search(message)
    if found is None:
        return message
    choices = re.findall(r"'([^']*)'", found["choices"])
    value = found["value"]
    close = difflib.get_close_matches(value.lower(), choices, n=3, cutoff=0.5)
    head = message[: found.start()]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{head}{value!r} is not one of {', '.join(choices)}{hint}"


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` (both paths for a rename or link), whatever the call that failed."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def error_outcome(exc: BaseException) -> tuple[str, int, str] | None:
    """What the error boundary says of ``exc`` and the exit code: (message, code, label); None for
    typer's own exits and usage errors (its click is vendored), which already carry their code."""
    if isinstance(exc, (typer.Exit, typer.Abort, typer.TyperException)):
        return None
    if isinstance(exc, BitconvertError):
        return str(exc), exc.exit_code, "error"
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        return "interrupted; no output was left behind", INTERRUPTED_EXIT, ""
    if isinstance(exc, MemoryError):
        return "out of memory", 1, "error"
    if isinstance(exc, OSError):
        return os_error_line(exc), 1, "error"
    text = " ".join(str(exc).split())
    return (f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)", INTERNAL_ERROR_EXIT,
            "internal error")  # fmt: skip


@contextmanager
def error_boundary() -> Iterator[None]:
    """One line on stderr and the documented exit code, whatever went wrong; a traceback only with --debug."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        outcome = error_outcome(exc)
        if outcome is None:
            raise
        message, code, label = outcome
        raise _fail(message, code, label) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No notes, warnings or progress (errors and the requested output stay)."),
]


def guarded(command: Callable) -> Callable:
    """``command`` run inside :func:`error_boundary`, with its own ``--quiet`` (the app registers every
    command through this, so each takes ``--quiet`` after its name as well as before it)."""

    @functools.wraps(command)  # keeps the annotations that typer reads; the signature is set below
    def run(*args, quiet: bool = False, **kwargs):
        state["quiet"] = state["quiet"] or quiet
        with error_boundary():
            return command(*args, **kwargs)

    sig = inspect.signature(command, eval_str=True)
    params = list(sig.parameters.values())
    tail = [i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD]
    at = tail[0] if tail else len(params)
    kind = inspect.Parameter.KEYWORD_ONLY if any(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params) \
        else inspect.Parameter.POSITIONAL_OR_KEYWORD
    quiet = inspect.Parameter("quiet", kind, default=False, annotation=Quiet)
    run.__signature__ = sig.replace(parameters=params[:at] + [quiet] + params[at:])
    return run


# --- output -----------------------------------------------------------------------------------


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A progress callback: a bar on a terminal, nothing otherwise."""
    if not enabled or state["quiet"] or not err.is_terminal:
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


def emit_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout, led by its ``schema_version`` (the schemas in ``bitconvert/schemas``)."""
    sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=2, default=str) + "\n")


def print_conversion(result) -> None:
    d = result.to_dict()
    table = Table(show_header=False, box=None, pad_edge=False)
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
    say(d["notes"], d["warnings"])


def say(notes: Sequence[str] = (), warnings: Sequence[str] = ()) -> None:
    """Notes and warnings, one whole line each on stderr (never cut, never padded); none with --quiet.
    Requested output stays alone on stdout, so a pipe or ``> file`` receives only that."""
    if state["quiet"]:
        return
    for label, lines in (("note:", notes), ("warning:", warnings)):
        for line in lines:
            err.print(Text.assemble((label, "yellow"), " ", line.translate(_CONTROL)), highlight=False)


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
