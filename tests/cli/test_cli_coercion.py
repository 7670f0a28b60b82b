"""The command line reads its values without pydantic (bitconvert/cli/coercion.py), and reads them as
typer does: for every parameter of every command, on right and wrong values, the light reader gives
typer's value or typer's error message; and a command run end to end imports no pydantic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from conftest import FIXTURES
from typer._click import Context
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from bitconvert.cli import app, coercion

#: values tried per kind of reader: certain ones, and ones the light reader must leave to typer or refuse
VALUES = {
    "text": ["abc", "", "ünïcode", "1,2,3", " spaced "],
    "texts": [("a", "b"), ["x"], (), ("ünïcode", ""), ("1,2", "3"), None, (1, "a")],
    "whole": ["0", "7", "-3", "007", "+5", "1.0", "1.5", "x", "", "1_000", " 3 ", "٣", 12],
    "decimal": ["0", "1.5", "-2.25", "1e-3", "1E5", "inf", "nan", ".5", "5.", "x", "", "1_000", 0.5, 2],
    "flag": [True, False, "yes", "0"],
    "choice": ["nope", "", "\x1b[31mred"],
    "path": [str(FIXTURES), str(FIXTURES / "bitnet-2b4t-packed" / "config.json"), "/nonexistent/x", "", "-",
             Path("relative/p")],
}


def _params(group=None):
    group = group or typer.main.get_command(app)
    for name, command in [("", group), *group.commands.items()]:
        for param in command.params:
            yield name, command, param


def _read(runtime, value, param, ctx):
    try:
        return ("value", runtime._coerce_value(value, param=param, ctx=ctx))
    except BadParameter as exc:
        return ("error", exc.message)


def _cases():
    for name, command, param in _params():
        reader = coercion._reader(param.type_descriptor.annotation, param.type_descriptor.parameter_info)
        if reader is None:
            continue
        values = list(VALUES[reader])
        if reader == "choice":
            choices = coercion.literal_values(param.type_descriptor.annotation)
            values += list(choices) + [c.upper() for c in choices]
        for value in values:
            yield pytest.param(name, param.name, reader, value, id=f"{name or 'app'}-{param.name}-{value!r}")


@pytest.mark.parametrize("command_name, param_name, reader, value", list(_cases()))
def test_the_light_reader_reads_as_typer(command_name, param_name, reader, value):
    group = typer.main.get_command(app)
    command = group.commands[command_name] if command_name else group
    param = next(p for p in command.params if p.name == param_name)
    ctx = Context(command)
    light = coercion.LightParam(param.type_descriptor, reader)
    own = build_runtime_param(param.type_descriptor)
    got, expected = _read(light, value, param, ctx), _read(own, value, param, ctx)
    assert repr(got) == repr(expected)  # repr: nan equals nan
    assert type(got[1]) is type(expected[1])


def test_every_parameter_gets_a_light_reader():
    # a parameter left to typer would import pydantic on every run of its command
    group = typer.main.get_command(app)
    installed = coercion.install(group)
    left = [(c, p.name) for c, _, p in _params(group) if not isinstance(p._runtime_param, coercion.LightParam)]
    assert left == [] and installed > 50


def test_a_wrong_light_reader_is_caught():
    # the comparison above can fail: a reader that takes "1.5" as a whole number differs from typer's
    param = next(p for _, _, p in _params() if p.name == "max_new_tokens")
    ctx = Context(typer.main.get_command(app).commands["run"])

    class Lax(coercion.LightParam):
        def _light(self, value, param, ctx):
            return int(float(value))

    lax = Lax(param.type_descriptor, "whole")
    assert _read(lax, "1.5", param, ctx) != _read(build_runtime_param(param.type_descriptor), "1.5", param, ctx)


PROBE = (
    "import atexit, runpy, sys\n"
    "sys.argv = ['bitconvert', *sys.argv[1:]]\n"
    "atexit.register(lambda: print(sorted(m for m in ('pydantic', 'torch') if m in sys.modules), file=sys.stderr))\n"
    "runpy.run_module('bitconvert', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    "args, code",
    [
        (["pack", FIXTURES / "bitnet-2b4t-master", "{tmp}/packed"], 0),
        (["pack", FIXTURES / "bitnet-2b4t-master", FIXTURES / "bitnet-2b4t-master" / "x"], 2),
        (["convert", FIXTURES / "bitnet-2b4t-master", "{tmp}/x", "--to", "nope"], 2),
        (["convert", FIXTURES / "bitnet-2b4t-master", "{tmp}/x", "--to", "GGUF", "--gguf-type", "TQ1_0",
          "--allow-fallback"], 0),
        (["verify", FIXTURES / "bitnet-2b4t-packed", "--atol", "0.5", "--max-code-mismatches", "3", "--help"], 0),
    ],
)
def test_commands_import_no_pydantic(args, code, tmp_path):
    argv = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=600)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
