"""Write options on the command line, generated from the writers' option dataclasses.

Each writer declares its options once, as fields of a dataclass (``formats/options.py``); this module
turns the fields of one or more formats into typer parameters and gives a command a signature with
them (typer reads ``__signature__``). A field shared by several formats (``--dtype``) is one option;
its choices are the union, and the chosen format's parser refuses a value it does not take. The
classes come from light modules (``formats.OPTIONS``), so building the command line imports no
writer and no numpy.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated, Any, Callable, Literal, Optional, Sequence

import typer

from ..formats import option_classes
from ..formats.options import fields_of

#: the help panel of write options in a command that takes several formats' options
PANEL = "Output format options (each names the --to formats that take it)"


@dataclasses.dataclass(frozen=True)
class CliOption:
    """One command-line write option: a field as the formats that declare it agree on it."""

    name: str
    cli: str
    negative: str | None
    is_flag: bool
    metavar: str | None
    choices: tuple[str, ...] | None
    #: format -> that format's help text and default (as typed on the command line; None: unset)
    helps: dict[str, str]
    defaults: dict[str, Any]

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.helps)


def cli_options(formats: Sequence[str]) -> list[CliOption]:
    """The write options of ``formats``, one per field name, in the order the formats declare them."""
    classes = option_classes()
    seen: dict[str, list[tuple[str, dataclasses.Field]]] = {}
    for fmt in formats:
        for name, f in fields_of(classes[fmt]).items():
            seen.setdefault(name, []).append((fmt, f))
    return [_merge(name, declared) for name, declared in seen.items()]


def _form(f: dataclasses.Field) -> tuple:
    """What must agree wherever a field name is declared: one flag means one thing."""
    m = f.metadata
    return m["cli"], m.get("negative"), isinstance(f.default, bool), m.get("metavar")


def _merge(name: str, declared: list[tuple[str, dataclasses.Field]]) -> CliOption:
    first_fmt, first = declared[0]
    for fmt, f in declared[1:]:
        if _form(f) != _form(first):
            raise TypeError(f"option {name!r} of {fmt} is declared unlike in {first_fmt}")
    choices: list[str] | None = None
    for _, f in declared:
        if f.metadata.get("choices") is not None:
            choices = choices or []
            choices += [c for c in f.metadata["choices"] if c not in choices]
    cli, negative, is_flag, metavar = _form(first)
    return CliOption(
        name=name,
        cli=cli,
        negative=negative,
        is_flag=is_flag,
        metavar=metavar,
        choices=tuple(choices) if choices is not None else None,
        helps={fmt: f.metadata["help"] for fmt, f in declared},
        defaults={fmt: f.default for fmt, f in declared},
    )


def _help(opt: CliOption, single: bool) -> str:
    """The option's help: the field's own for a one-format command; else a line per format (one
    line for formats that say the same), each with that format's default."""
    if single:
        return next(iter(opt.helps.values()))
    lines: dict[str, list[str]] = {}
    for fmt, text in opt.helps.items():
        default = opt.defaults[fmt]
        if default is not None and not opt.is_flag:
            text = f"{text} Default: {default}."
        lines.setdefault(text, []).append(fmt)
    return "\n\n".join(f"{', '.join(fmts)}: {text}" for text, fmts in lines.items())


def parameter(opt: CliOption, *, single: bool) -> inspect.Parameter:
    """The typer parameter of ``opt``. A one-format command shows (and passes) the field's default;
    a command of several formats passes None, so each format keeps its own default."""
    help = _help(opt, single)
    panel = None if single else PANEL
    default = next(iter(opt.defaults.values())) if single else None
    if opt.is_flag:
        annotation: Any = Annotated[bool, typer.Option(opt.cli, help=help, rich_help_panel=panel)]
        default = False
    elif opt.negative is not None:
        decl = f"{opt.cli}/{opt.negative}"
        annotation = Annotated[Optional[bool], typer.Option(decl, help=help, rich_help_panel=panel)]
    elif opt.choices is not None:
        kind = Literal.__getitem__(opt.choices)  # typer lists these in --help and completes them
        info = typer.Option(opt.cli, help=help, case_sensitive=False, rich_help_panel=panel)
        annotation = Annotated[Optional[kind], info]
    else:
        info = typer.Option(opt.cli, help=help, metavar=opt.metavar, rich_help_panel=panel)
        annotation = Annotated[Optional[str], info]
        default = None if default is None else str(default)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def takes_write_options(*formats: str) -> Callable[[Callable], Callable]:
    """Gives a command the write options of ``formats``, generated from their dataclasses, as
    parameters after its required ones; the command receives them in ``**options`` (see :func:`given`)."""

    def decorate(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]  # fmt: skip
        at = next((i for i, p in enumerate(own) if p.default is not p.empty), len(own))
        generated = [parameter(o, single=len(formats) == 1) for o in cli_options(formats)]
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise TypeError(f"{command.__name__}: parameters named like write options: {sorted(clash)}")
        command.__signature__ = sig.replace(parameters=own[:at] + generated + own[at:])
        return command

    return decorate


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The write options a command received, less those not given (None, or a flag left off)."""
    return {name: value for name, value in options.items() if value is not None and value is not False}
