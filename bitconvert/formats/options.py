"""Typed write options: one frozen dataclass per writer, each field declaring its CLI flag once.

A writer's ``Options`` class lives in a light module of its format (``hf/options.py``,
``gguf/options.py``, ``nanotron/options.py``) and is listed in ``formats.OPTIONS``, so that the
command line can be generated from it, and an option refused, without importing any writer (nor
numpy: this module and those import nothing heavy; parsers import what they need when called).

A field is declared with :func:`option`: its default written as a user types it (``"bf16"``,
``"5GB"``, ``"transformers"``), its flag, its help, its parser and, for a choice, its values.
:func:`write_options` makes the frozen dataclass and runs every value, default or given, through
its field's parser, so an instance holds typed values (dtype names such as ``"BF16"``, byte counts,
enums) however it was made. :func:`build_options` turns what a caller gave (keyed by field name)
into that dataclass and refuses, as a usage error, an option the chosen format does not take,
naming the formats that do.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

from ..errors import UsageError

#: the float dtypes a ``--dtype`` takes, as typed on the command line
FLOAT_CHOICES = ("bf16", "f16", "f32")
#: what a user types for a float dtype (``--dtype bf16``) -> its safetensors name
SHORT_NAMES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}


def option(
    default: Any,
    cli: str,
    help: str,
    parse: Callable[[Any], Any] | None = None,
    *,
    choices: Iterable[str] | None = None,
    metavar: str | None = None,
    negative: str | None = None,
) -> Any:
    """A dataclass field that knows its CLI flag, its help text and how to read a value.

    ``default``: as typed on the command line (the parser makes it typed); None means "not
    chosen" (the writer decides, e.g. from the source), and a bool default makes a plain flag.
    ``choices``: the values a choice takes (``--help`` lists them, shell completion offers them);
    a choice without its own ``parse`` is read by :func:`choice_parser`. ``metavar``: the word
    ``--help`` shows for a free value (``SIZE``). ``negative``: the flag that sets a yes/no/unset
    option (default None) to False, e.g. ``--no-rope-interleaved``.
    """
    choices = tuple(choices) if choices is not None else None
    if parse is None and choices is not None:
        parse = choice_parser(cli, choices)
    if isinstance(default, bool) and negative is not None:
        raise ValueError(f"{cli}: a flag with a negative form needs default None (unset)")
    metadata = {"cli": cli, "help": help, "parse": parse, "choices": choices, "metavar": metavar, "negative": negative}
    return dataclasses.field(default=default, metadata=metadata)


def write_options(cls: type) -> type:
    """A frozen dataclass whose every value, default or given, is read by its field's parser.

    The parsers accept the typed value too, so reading twice (``dataclasses.replace``) is harmless.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            parse = f.metadata.get("parse")
            value = getattr(self, f.name)
            if parse is not None and value is not None:
                object.__setattr__(self, f.name, parse(value))

    cls.__post_init__ = __post_init__
    return dataclasses.dataclass(frozen=True)(cls)


# --- parsers shared by the writers' fields (each accepts the typed value too) ---------------------


def parse_size(text: Any) -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
        if not m:
            raise UsageError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or a byte count")
        number, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
        size = int(number * (1024 if binary else 1000) ** "_KMGT".index(unit or "_"))
    if size <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return size


def dtype_parser(flag: str, allowed: Iterable[str] = FLOAT_CHOICES) -> Callable[[Any], Any]:
    """Parses ``bf16``/``f16``/``f32`` (any case, or the dtype name itself, ``"BF16"``) into the dtype name."""
    allowed = tuple(allowed)

    def parse(value: Any):
        names = {SHORT_NAMES[a]: a for a in allowed}
        if value in names:
            return value
        text = str(value).lower()
        if text not in allowed:
            raise UsageError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
        return SHORT_NAMES[text]

    return parse


def parse_linear_class(value: Any):
    from ..ternary.linear_class import LinearClass

    if value is None or isinstance(value, LinearClass):
        return value
    try:
        return LinearClass(str(value).lower())
    except ValueError:
        raise UsageError(f"--linear-class must be autobitlinear or bitlinear, got {value!r}") from None


def choice_parser(flag: str, choices: Iterable[str]) -> Callable[[Any], str]:
    choices = tuple(choices)

    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in choices:
            raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def parse_flag(value: Any) -> bool:
    return bool(value)


def recipe_parser(fmt: str) -> Callable[[Any], Any]:
    """Reads a ``--recipe`` for writer ``fmt`` into a :class:`~bitconvert.ternary.recipes.Recipe`,
    refusing one that cannot write ``fmt`` (the records in ``ternary.recipes`` say which can)."""

    def parse(value: Any):
        from ..ternary.recipes import parse_recipe, recipes_for

        try:
            return parse_recipe(value, recipes_for(fmt))
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    return parse


# --- the fields several writers share -----------------------------------------------------------


def linear_class_field() -> Any:
    return option(
        None,
        "--linear-class",
        "Convention of weight_scale: autobitlinear (mean|W|, multiply) or bitlinear (1/mean|W|, divide). "
        "Default: the source's, else autobitlinear.",
        parse_linear_class,
        choices=("autobitlinear", "bitlinear"),
    )


def dtype_field(help: str, allowed: Iterable[str] = FLOAT_CHOICES) -> Any:
    return option(None, "--dtype", help, dtype_parser("--dtype", allowed), choices=tuple(allowed))


def max_shard_size_field() -> Any:
    return option("5GB", "--max-shard-size", "Largest safetensors shard, e.g. 5GB, 500MB.", parse_size, metavar="SIZE")


def recipe_option(fmt: str, choices: Iterable[str], help: str) -> Any:
    """``--recipe``: which producer's quantization a master is reproduced with; the first choice is
    the default. ``choices`` are the names of ``ternary.recipes.recipes_for(fmt)``, written out so
    that reading them needs no numpy (tests/cli/test_write_options.py checks they agree)."""
    choices = tuple(choices)
    return option(choices[0], "--recipe", help, recipe_parser(fmt), choices=choices)


# --- building ----------------------------------------------------------------------------------


def fields_of(options_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(options_cls)}


def flag_of(options_cls: type, name: str) -> str:
    f = fields_of(options_cls).get(name)
    return f.metadata.get("cli", name) if f else "--" + name.replace("_", "-")


def build_options(fmt: str, options_cls: type, given: Mapping[str, Any] | Any, takers: Mapping[str, type]) -> Any:
    """``options_cls`` filled from ``given`` (field name -> value; a ready instance passes through).

    ``takers`` maps every writer's name to its options class, to name who takes a refused option.
    A value of None counts as not given.
    """
    if isinstance(given, options_cls):
        return given
    if dataclasses.is_dataclass(given):
        raise UsageError(f"options of type {type(given).__name__} are not for --to {fmt} ({options_cls.__name__})")
    known = fields_of(options_cls)
    values = {}
    for name, value in (given or {}).items():
        if name not in known:
            who = sorted(f for f, c in takers.items() if name in fields_of(c))
            if not who:
                raise UsageError(f"unknown write option {name!r}")
            flag = flag_of(takers[who[0]], name)
            raise UsageError(f"{flag} does not apply to --to {fmt}; it is taken by: {', '.join(who)}")
        if value is not None:
            values[name] = value
    return options_cls(**values)  # the dataclass parses every value (write_options)
