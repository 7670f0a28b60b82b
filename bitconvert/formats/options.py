"""Typed write options: one frozen dataclass per writer, each field naming its CLI flag.

A writer declares ``Options`` (a dataclass built from the shared fields below plus its own), so
its defaults are documented once, in the field. :func:`build_options` turns what a caller gave
(CLI strings or typed values, keyed by field name) into that dataclass and refuses, as a usage
error, any option the chosen format does not take, naming the formats that do.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

from ..dtypes import SHORT_NAMES
from ..errors import UsageError


def option(
    default: Any,
    cli: str,
    help: str,
    parse: Callable[[Any], Any] | None = None,
    *,
    choices: Iterable[str] | None = None,
) -> Any:
    """A dataclass field that knows its CLI flag, its help text, how to read a string and, for a
    choice, the values it takes (which ``--help`` lists and shell completion offers). A choice
    without its own ``parse`` is read by :func:`choice_parser`; a ``bool`` field is a plain flag."""
    choices = tuple(choices) if choices is not None else None
    if parse is None and choices is not None:
        parse = choice_parser(cli, choices)
    return dataclasses.field(default=default, metadata={"cli": cli, "help": help, "parse": parse, "choices": choices})


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


def dtype_parser(flag: str, allowed: Iterable[str] = ("bf16", "f16", "f32")) -> Callable[[Any], Any]:
    """Parses ``bf16``/``f16``/``f32`` (or the dtype name itself, ``"BF16"``) into the dtype name."""
    allowed = tuple(allowed)

    def parse(value: Any):
        names = {SHORT_NAMES[a]: a for a in allowed}
        if value in names:
            return value
        if value not in allowed:
            raise UsageError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
        return SHORT_NAMES[value]

    return parse


def parse_linear_class(value: Any):
    from ..ternary import LinearClass

    if value is None or isinstance(value, LinearClass):
        return value
    try:
        return LinearClass(value)
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


# --- the fields several writers share -----------------------------------------------------------


def linear_class_field() -> Any:
    return option(
        None,
        "--linear-class",
        "weight_scale convention: autobitlinear (mean|W|, multiply) or bitlinear (1/mean|W|, divide); "
        "default: the source's, else autobitlinear",
        parse_linear_class,
        choices=("autobitlinear", "bitlinear"),
    )


def dtype_field(help: str, allowed: Iterable[str] = ("bf16", "f16", "f32")) -> Any:
    return option(None, "--dtype", help, dtype_parser("--dtype", allowed), choices=tuple(allowed))


def max_shard_size_field() -> Any:
    return option(5 * 1000**3, "--max-shard-size", "largest safetensors shard, e.g. 5GB, 500MB", parse_size)


# --- building ----------------------------------------------------------------------------------


def fields_of(options_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(options_cls)}


def flag_of(options_cls: type, name: str) -> str:
    f = fields_of(options_cls).get(name)
    return f.metadata.get("cli", name) if f else "--" + name.replace("_", "-")


def build_options(fmt: str, options_cls: type, given: Mapping[str, Any] | Any, takers: Mapping[str, type]) -> Any:
    """``options_cls`` filled from ``given`` (field name -> value; a ready instance passes through).

    ``takers`` maps every writer's name to its options class, to name who takes a refused option.
    """
    if isinstance(given, options_cls):
        return given
    if dataclasses.is_dataclass(given):
        raise UsageError(f"options of type {type(given).__name__} are not for --to {fmt} ({options_cls.__name__})")
    known = fields_of(options_cls)
    values = {}
    for name, value in (given or {}).items():
        if name not in known:
            flag = next((flag_of(c, name) for c in takers.values() if name in fields_of(c)), None)
            if flag is None:
                raise UsageError(f"unknown write option {name!r}")
            who = sorted(f for f, c in takers.items() if name in fields_of(c))
            raise UsageError(f"{flag} does not apply to --to {fmt}; it is taken by: {', '.join(who)}")
        parse = known[name].metadata.get("parse")
        values[name] = parse(value) if parse is not None and value is not None else value
    return options_cls(**values)


def recipe_field(allowed: Iterable[Any], help: str) -> Any:
    """``--recipe``: which producer's quantization a master is reproduced with (see bitconvert.ternary.recipes)."""
    allowed = tuple(allowed)

    def parse(value: Any):
        from ..ternary.recipes import parse_recipe

        try:
            return parse_recipe(value, allowed)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    return option(allowed[0], "--recipe", help, parse, choices=tuple(r.value for r in allowed))
