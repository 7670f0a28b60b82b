"""Reading command-line values without pydantic: typer's own checks, minus its start-up cost.

typer (0.29) turns each value into its annotated type through a pydantic ``TypeAdapter``; importing
pydantic and building the adapters costs a command about 0.15 s before it does anything, as much
as a usage error should take in all. bitconvert's parameters are of a few plain kinds (text, paths,
whole and decimal numbers, yes/no, a choice of words), which this module reads with typer's own
choice and path functions. It answers only where the result is certain to be typer's: any other
value (a malformed number, an empty path) goes to typer's own reader, and a word that is not one
of the choices is refused in typer's words, so the value and the error message are always typer's
(``tests/cli/test_cli_coercion.py`` compares both on every parameter of the app). Where typer's
internals differ from what this module expects, it installs nothing and typer reads as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

try:
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._display import _escape_control_characters
    from typer._param_types import coerce_cli_choice, coerce_cli_path, routes_to_path
    from typer._typing import is_literal_type, literal_values
    from typer.core import _TyperParameter
except ImportError:  # another typer: it reads the values itself
    RuntimeParam = None  # type: ignore[assignment,misc]

_WHOLE = re.compile(r"-?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?", re.ASCII)


def _plain_path(info) -> bool:
    """A path parameter with typer's defaults but ``readable``: nothing resolved, no dash for stdin."""
    return not (info.exists or info.resolve_path or info.allow_dash or info.path_type is not None or info.writable)


def _reader(annotation: Any, info) -> str | None:
    """Which light reader takes values of ``annotation``, or None (typer's own reader)."""
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        return None
    if annotation is str:
        return "text"
    if annotation == list[str]:  # a repeatable text option (embed --text): its values, as a list
        return "texts"
    if annotation is bool:
        return "flag"
    if annotation is int:
        return "whole"
    if annotation is float:
        return "decimal"
    if is_literal_type(annotation) and all(isinstance(v, str) for v in literal_values(annotation)):
        return "choice"
    if isinstance(annotation, type) and issubclass(annotation, Path) and routes_to_path(annotation, info):
        return "path" if _plain_path(info) else None
    return None


if RuntimeParam is not None:

    class LightParam(RuntimeParam):  # type: ignore[misc,valid-type]
        """One parameter's reader: certain values here, every other one by typer's own."""

        def __init__(self, descriptor, reader: str) -> None:
            super().__init__(descriptor.parameter_info, descriptor.annotation)
            object.__setattr__(self, "descriptor", descriptor)
            object.__setattr__(self, "reader", reader)
            object.__setattr__(self, "typer_reader", None)

        def _typer(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.typer_reader is None:
                object.__setattr__(self, "typer_reader", build_runtime_param(self.descriptor))
            return self.typer_reader._coerce_value(value, param=param, ctx=ctx)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            found = self._light(value, param, ctx)
            return self._typer(value, param, ctx) if found is _UNSURE else found

        def _light(self, value: Any, param: Any, ctx: Any) -> Any:
            reader = self.reader
            if reader == "text":
                return value if isinstance(value, str) else _UNSURE
            if reader == "texts":
                if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                    return list(value)
                return _UNSURE
            if reader == "flag":
                return value if isinstance(value, bool) else _UNSURE
            if reader == "whole":
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
                return int(value) if isinstance(value, str) and _WHOLE.fullmatch(value) else _UNSURE
            if reader == "decimal":
                if isinstance(value, float):
                    return value
                return float(value) if isinstance(value, str) and _DECIMAL.fullmatch(value) else _UNSURE
            if reader == "choice":
                if not isinstance(value, str):
                    return _UNSURE
                choices = literal_values(self.annotation)
                try:
                    return coerce_cli_choice(value, choices=choices, case_sensitive=self.parameter_info.case_sensitive,
                                             ctx=ctx)  # fmt: skip
                except ValueError as exc:  # worded as typer words pydantic's report of the same error
                    raise BadParameter(_escape_control_characters(f"Value error, {exc}"), ctx=ctx, param=param) from None
            if reader == "path":
                if isinstance(value, str) and value:
                    value = self.annotation(value)
                if not isinstance(value, self.annotation):
                    return _UNSURE
                return coerce_cli_path(value, self.parameter_info, path_type=self.annotation, param=param, ctx=ctx)
            return _UNSURE


_UNSURE = object()


def install(command: Any) -> int:
    """Give every parameter of ``command`` (a click command or group, recursively) that typer would
    read through pydantic a light reader, ``--help`` included; returns how many were given one."""
    if RuntimeParam is None:
        return 0
    count = sum(install(sub) for sub in getattr(command, "commands", {}).values())
    count += sum(_give_reader(param) for param in command.params)
    # ``--help`` is made on first use, after this runs: its reader is given then
    made_help = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = made_help(ctx)
        if option is not None:
            _give_reader(option)
        return option

    command.get_help_option = get_help_option
    return count


def _give_reader(param: Any) -> bool:
    if not isinstance(param, _TyperParameter) or getattr(param, "_runtime_param", False) is not None:
        return False
    descriptor = param.type_descriptor
    reader = None if descriptor.file_annotation is not None else _reader(descriptor.annotation, descriptor.parameter_info)
    if reader is None:
        return False
    param._runtime_param = LightParam(descriptor, reader)
    return True
