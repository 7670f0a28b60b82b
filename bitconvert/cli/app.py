"""The ``bitconvert`` Typer app, assembled from the command modules; every command runs inside the one
error boundary (:func:`bitconvert.cli.common.guarded`)."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.main
from typer._click.exceptions import ClickException, UsageError  # typer 0.29 vendors click (pinned in pyproject)

from .. import __version__
from ..io.pipeline import tune_allocator
from . import coercion, convert, embed, runtime, upload, verify
from .common import INTERRUPTED_EXIT, Quiet, err, fail_line, guarded, out, state, usage_error_line


class _App(typer.Typer):
    """The Typer app, its parameters read without pydantic (see :mod:`.coercion`)."""

    def __call__(self, *args, **kwargs):
        command = typer.main.get_command(self)
        coercion.install(command)
        return command(*args, **kwargs)


app = _App(
    name="bitconvert",
    help="Convert, verify and run BitNet b1.58 (ternary) checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion; choices are completed
)

#: in the order ``--help`` lists them
COMMANDS = (
    convert.inspect,
    convert.pack,
    convert.unpack,
    convert.convert,
    convert.formats,
    upload.upload,
    verify.verify,
    runtime.run,
    runtime.logits,
    embed.embed,
)
for command in COMMANDS:
    app.command()(guarded(command))


def _version(value: bool) -> None:
    if value:
        out.print(f"bitconvert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Quiet = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    kernel_config: Annotated[
        Optional[Path],
        typer.Option(
            "--kernel-config",
            metavar="FILE",
            help="Read TL1/TL2 GGUFs that record no kernel configuration "
            "(bitnet.cpp's own) with this kernel_config.ini of the build that wrote them.",
        ),
    ] = None,
    kernel_preset: Annotated[
        Optional[str],
        typer.Option(
            "--kernel-preset",
            metavar="NAME",
            help="Read such files with one of bitnet.cpp's preset "
            "kernel configurations (bitnet_b1_58-large, bitnet_b1_58-3B, Llama3-8B-1.58-100B-tokens).",
        ),
    ] = None,
) -> None:
    state["debug"] = debug
    state["quiet"] = quiet
    if kernel_config is not None or kernel_preset is not None:
        # set for the command that follows, in this thread; the GGUF reader takes it when a file is opened
        from ..formats.gguf.kernel_config import ASSUMED, KernelChoice

        ASSUMED.set(KernelChoice(kernel_config, kernel_preset))


def main() -> None:
    """The console entry point: run the command, then leave at once.

    By the time a command returns, its outputs are complete and moved into place; tearing the
    interpreter down (collecting torch's hundreds of thousands of objects, unmapping the source)
    would add up to a second to every run. Exit handlers still run and output is flushed, then the
    process ends with the command's exit code. For use inside another program, call ``app``.
    """
    tune_allocator()  # pieces reused from the heap, memory bounded (see there)
    # numba imports scipy where it is installed, and each OpenBLAS (numpy's, scipy's) starts a thread
    # per core that spins after start-up; nothing the command line runs multiplies float matrices in
    # numpy, so they would only take the cores the conversion uses. Set before numpy is imported.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # and this process's numba is the conversion's alone: it loads without scipy's BLAS (see jit)
    os.environ.setdefault("BITCONVERT_NUMBA_WITHOUT_SCIPY", "1")
    try:
        # not standalone: a usage error comes back here, to be said in one line (typer draws a box)
        code = app(standalone_mode=False)
    except UsageError as exc:
        code = _usage_error(exc)
    except ClickException as exc:
        exc.show()
        code = exc.exit_code
    except typer.Abort:
        err.print("aborted", highlight=False)
        code = INTERRUPTED_EXIT
    except SystemExit as exc:
        code = exc.code
    code = code if isinstance(code, int) or code is None else code  # a command's return value is its result
    if code is not None and not isinstance(code, int):
        code = 0  # a command returned a value (none of bitconvert's does): it ran to the end
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (a closed pipe) takes nothing more
            pass
    os._exit(code or 0)


def _usage_error(exc: UsageError) -> int:
    """A usage error typer found while parsing: one line on stderr, and ``verify``'s reports (a JUnit
    error case, a JSON error object) when they were asked for, as on any other exit."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # a command given no arguments: its help
        exc.show()
        return 0
    args = sys.argv[1:]
    # the parser's own errors (an option without its value) carry no context: the command is the first word
    words = [a for a in args if not a.startswith("-")]
    name = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else (words[0] if words else None)
    commands = typer.main.get_command(app).commands
    command = commands.get(name) if name else None
    prog = Path(sys.argv[0]).name if sys.argv[0] and not sys.argv[0].endswith("__main__.py") else "bitconvert"
    message = usage_error_line(exc.format_message()).rstrip(".")
    if command is not None and name == "verify":
        from .verify import report_usage_error

        takes_value = {o for p in command.params if not getattr(p, "is_flag", True) for o in p.opts}
        report_usage_error(args, message, exc.exit_code, takes_value)
    fail_line(f"{message} (see '{prog}{' ' + name if command is not None else ''} --help')")
    return exc.exit_code
