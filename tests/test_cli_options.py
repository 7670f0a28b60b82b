"""Write options on the command line are the writers' option dataclasses, generated, never copied:
each field is one option of ``pack`` (hf-packed), ``unpack`` (hf-bf16) and ``convert`` (every writer)
with the field's flag, help, default and choices; ``--help`` lists the choices and shell completion
offers them; building the command line imports no writer (nor numpy, nor torch)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import struct
import subprocess
import sys
from collections import Counter
from typing import get_args

import pytest
import typer.main
from conftest import FIXTURES, run_cli

from bitconvert.cli import app
from bitconvert.formats import CATALOGUE, OPTIONS, WRITERS, load_writers, options_class, writer_names

#: each command that takes write options -> the formats whose options it takes
COMMANDS = {"pack": ("hf-packed",), "unpack": ("hf-bf16",), "convert": tuple(OPTIONS)}
#: the options a command declares itself (everything else must be generated)
OWN = {"--force", "--hash-sources", "--json", "--help"}
OWN_OF = {"pack": OWN, "unpack": OWN, "convert": OWN | {"--to", "--push-to"}}
WIDE = {**os.environ, "COLUMNS": "250"}  # --help on one line per option, whatever the terminal


def fields(fmt: str) -> list[dataclasses.Field]:
    return list(dataclasses.fields(options_class(fmt)))


def flags(f: dataclasses.Field) -> list[str]:
    return [f.metadata["cli"]] + ([f.metadata["negative"]] if f.metadata.get("negative") else [])


def click_command(name: str):
    return typer.main.get_command(app).commands[name]


def command_function(name: str):
    return next(c.callback for c in app.registered_commands if c.callback.__name__ == name)


def literal_values(annotation) -> tuple | None:
    """The values of ``Optional[Literal[...]]`` / ``Literal[...]``, or None for another type."""
    for arg in (annotation, *get_args(annotation)):
        if getattr(arg, "__origin__", None) is not None and str(arg).startswith("typing.Literal"):
            return get_args(arg)
    return None


@pytest.mark.parametrize("command", COMMANDS)
def test_every_writer_field_is_one_option_and_nothing_else_is_a_write_option(command):
    params = click_command(command).params
    seen = Counter(o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
    declared = {flag for fmt in COMMANDS[command] for f in fields(fmt) for flag in flags(f)}
    assert {flag: seen[flag] for flag in declared} == {flag: 1 for flag in declared}
    assert set(seen) - OWN_OF[command] == declared  # no hand-written copy of a write option


@pytest.mark.parametrize("command", COMMANDS)
def test_generated_parameters_carry_the_fields_help_default_and_choices(command):
    formats = COMMANDS[command]
    signature = inspect.signature(command_function(command)).parameters
    options = {p.name: p for p in click_command(command).params}
    for fmt in formats:
        for f in fields(fmt):
            m, option = f.metadata, options[f.name]
            assert [*option.opts, *option.secondary_opts] == flags(f), f.name
            assert m["help"] in option.help, f.name
            choices = literal_values(get_args(signature[f.name].annotation)[0])
            if m["choices"] is None:
                assert choices is None, f.name
            elif len(formats) == 1:
                assert choices == m["choices"], f.name
            else:  # the union over the formats; the chosen format refuses what it does not take
                union = {c for g in formats for h in fields(g) if h.name == f.name for c in h.metadata["choices"]}
                assert set(choices) == union, f.name
            if isinstance(f.default, bool):
                assert option.is_flag and not option.default, f.name
            elif len(formats) == 1:  # shown by --help, and read by the field's parser like any value
                assert option.default == (None if f.default is None else f.default if choices else str(f.default))
            else:  # each format keeps its own default, which the help names
                assert option.default is None, f.name
                if f.default is not None:
                    assert fmt in option.help and f"Default: {f.default}." in option.help, f.name


def test_pack_help_lists_the_choices():
    r = run_cli("pack", "--help", env=WIDE)
    assert r.returncode == 0, r.stderr
    for listed in ("<autobitlinear|bitlinear>", "<bf16|f32>", "<transformers|onebitllms>", "<bf16|f16|f32>"):
        assert listed in r.stdout, listed
    assert "[default: bf16]" in r.stdout and "[default: 5GB]" in r.stdout


def test_convert_help_lists_the_formats_and_gguf_types():
    r = run_cli("convert", "--help", env=WIDE)
    assert r.returncode == 0, r.stderr
    assert f"<{'|'.join(writer_names())}>" in r.stdout
    assert "<tq2_0|tq1_0|i2_s|tl1|tl2|f16|bf16|f32>" in r.stdout
    assert "<transformers|onebitllms|llama.cpp|bitnet.cpp|bitnet-gpu>" in r.stdout
    assert "SRC" in r.stdout and "DST" in r.stdout


def _safetensors_dtypes(folder) -> set[str]:
    out = set()
    for f in folder.glob("*.safetensors"):
        raw = f.read_bytes()
        header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
        out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def test_unpack_takes_f16_as_convert_does(tmp_path):
    packed = FIXTURES / "bitnet-2b4t-packed"
    r = run_cli("unpack", packed, tmp_path / "u", "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    assert run_cli("convert", packed, tmp_path / "c", "--to", "hf-bf16", "--dtype", "F16").returncode == 0
    assert _safetensors_dtypes(tmp_path / "u") == {"F16"}
    for f in (tmp_path / "u").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "c" / f.name).read_bytes()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--to", "gguf", "--bogus"], "--bogus"),
        (["--to", "onnx"], "onnx"),
        (["--to", "gguf", "--gguf-type", "q4_0"], "q4_0"),
        (["--to", "hf-bf16", "--dtype", "f64"], "f64"),
    ],
)
def test_usage_errors_of_the_parser_keep_exit_2(tmp_path, args, needle):
    r = run_cli("convert", FIXTURES / "llama-master", tmp_path / "o", *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_value_the_chosen_format_does_not_take_is_refused_by_its_parser(tmp_path):
    # --recipe lists every recipe; gguf takes three of them
    r = run_cli("convert", FIXTURES / "llama-master", tmp_path / "o.gguf", "--to", "gguf", "--recipe", "onebitllms")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--recipe must be one of transformers, llama.cpp, bitnet.cpp" in r.stderr


def test_shell_completion_offers_the_choices():
    wrapper = "import sys; sys.argv[0] = 'bitconvert'; from bitconvert.cli import main; main()"

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_BITCONVERT_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
        r = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("bitconvert convert a b --to ") == writer_names()
    assert complete("bitconvert pack a b --linear-class ") == ["autobitlinear", "bitlinear"]
    assert complete("bitconvert unpack a b --dtype ") == ["bf16", "f16", "f32"]
    shown = subprocess.run([sys.executable, "-c", wrapper, "--show-completion", "bash"], capture_output=True, text=True)
    assert shown.returncode == 0 and "_BITCONVERT_COMPLETE" in shown.stdout, shown.stderr


# --- one declaration ------------------------------------------------------------------------------


def test_each_writer_uses_the_options_class_the_table_names():
    load_writers()
    assert set(OPTIONS) == set(writer_names()) == set(WRITERS)
    for fmt in OPTIONS:
        assert WRITERS[fmt].Options is options_class(fmt), fmt
        options_class(fmt)()  # every default reads through its field's parser


def test_written_out_choices_agree_with_the_tables_they_name():
    from bitconvert.formats.gguf import i2s_layouts, options as gguf_options, types
    from bitconvert.formats.nanotron import flavors, options as nanotron_options
    from bitconvert.ternary.recipes import recipes_for

    for fmt in OPTIONS:
        for f in fields(fmt):
            if f.name == "recipe":
                assert f.metadata["choices"] == tuple(r.value for r in recipes_for(fmt)), fmt
                assert options_class(fmt)().recipe is recipes_for(fmt)[0]
    assert gguf_options.I2S_LAYOUTS == i2s_layouts.LAYOUTS
    assert set(gguf_options.WEIGHT_TYPES) | set(gguf_options.EMBED_TYPES) <= set(types.BY_OPTION)
    assert nanotron_options.FLAVOR_CHOICES == tuple(flavors.FLAVORS)


def test_building_the_command_line_imports_no_writer():
    code = (
        "import sys, typer.main\n"
        "from bitconvert.cli import app\n"
        "typer.main.get_command(app)\n"
        "writers = {f'bitconvert.formats.{w}' for _, w in __import__('bitconvert.formats').formats.CATALOGUE.values()}\n"
        "print(sorted((writers | {'numpy', 'torch', 'click'}) & set(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert all(w for _, w in CATALOGUE.values())


def test_the_error_boundary_lets_typer_exits_and_usage_errors_through():
    from bitconvert.cli.common import error_boundary

    for exc in (typer.Exit(1), typer.Abort(), typer.BadParameter("no")):
        with pytest.raises(type(exc)) as caught:
            with error_boundary():
                raise exc
        assert caught.value is exc
