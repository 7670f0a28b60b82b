"""The ``bitconvert`` Typer app, assembled from the command modules; every command runs inside the one
error boundary (:func:`bitconvert.cli.common.guarded`)."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..io.pipeline import return_freed_blocks
from . import coercion, convert, embed, runtime, upload, verify
from .common import guarded, out, state


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
    return_freed_blocks()  # a streaming conversion's memory stays its pipeline's (see there)
    try:
        app()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (a closed pipe) takes nothing more
            pass
    os._exit(code or 0)
