"""Write options are the writers' option dataclasses, generated, never copied: each field is one
option of ``pack`` (hf-packed), ``unpack`` (hf-bf16) and ``convert`` (every writer) with the field's
flag, help, default and choices; a value or an option the chosen format does not take is a usage
error (exit 2) naming the formats that take it; ``unpack --dtype f16`` is ``convert --to hf-bf16
--dtype f16``."""

from __future__ import annotations

import dataclasses
import inspect
import json
import struct
from collections import Counter
from typing import get_args

import pytest
import typer.main
from conftest import FIXTURES, cli

from bitconvert.cli import app
from bitconvert.errors import UsageError
from bitconvert.formats.gguf import i2s_layouts, types
from bitconvert.formats import OPTIONS, WRITERS, load_writers, options_class, options_for, writer_names


#: each command that takes write options -> the formats whose options it takes
COMMANDS = {"pack": ("hf-packed",), "unpack": ("hf-bf16",), "convert": tuple(OPTIONS)}


#: the options a command declares itself (everything else must be generated)
OWN = {"--force", "--hash-sources", "--json", "--help"}


OWN_OF = {"pack": OWN, "unpack": OWN, "convert": OWN | {"--to", "--push-to"}}


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


def test_gguf_option_choices_are_the_type_and_layout_tables():
    from bitconvert.formats.gguf.options import EMBED_TYPES, I2S_LAYOUTS, WEIGHT_TYPES
    from bitconvert.ternary.recipes import recipes_for

    assert set(WEIGHT_TYPES) | set(EMBED_TYPES) <= set(types.BY_OPTION)
    assert all(types.BY_OPTION[t].kind == "float" for t in EMBED_TYPES)
    assert I2S_LAYOUTS == i2s_layouts.LAYOUTS and I2S_LAYOUTS[0] == i2s_layouts.DEFAULT_LAYOUT
    from bitconvert.formats.gguf.options import GGUFOptions

    recipe = next(f for f in __import__("dataclasses").fields(GGUFOptions) if f.name == "recipe")
    assert recipe.metadata["choices"] == tuple(r.value for r in recipes_for("gguf"))


def test_options_parse_and_keep_defaults():
    opts = options_for("hf-packed", {"scale_dtype": "f32", "max_shard_size": "2MB"})
    assert (opts.scale_dtype, opts.max_shard_size, opts.linear_class, opts.dtype) == ("F32", 2_000_000, None, None)
    assert options_for("hf-packed", {}).scale_dtype == "BF16"  # a default is read as a given value is
    assert options_for("gguf", {}).gguf_type == "tq2_0"
    with pytest.raises(UsageError, match="--gguf-type must be one of"):
        options_for("gguf", {"gguf_type": "nonsense"})


@pytest.mark.parametrize(
    "to, args, flag",
    [
        ("hf-packed", ["--gguf-type", "tq2_0"], "--gguf-type"),
        ("hf-packed", ["--tp", "7"], "--tp"),
        ("hf-packed", ["--embed-type", "q8_0"], "--embed-type"),
        ("gguf", ["--scale-dtype", "f32"], "--scale-dtype"),
        ("gguf", ["--max-shard-size", "1KB"], "--max-shard-size"),
        ("gguf", ["--dtype", "f32"], "--dtype"),
        ("nanotron", ["--linear-class", "bitlinear"], "--linear-class"),
    ],
)
def test_an_option_the_target_does_not_take_is_refused(tmp_path, to, args, flag):
    dst = tmp_path / "out"
    r = cli("convert", FIXTURES / "bitnet-2b4t-master", dst, "--to", to, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and f"--to {to}" in lines[0], r.stderr
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_refusal_names_the_formats_that_take_the_option():
    with pytest.raises(UsageError, match=r"--max-shard-size does not apply to --to gguf; it is taken by: hf-bf16, hf-packed"):
        options_for("gguf", {"max_shard_size": "1KB"})


def test_a_value_the_chosen_format_does_not_take_is_refused_by_its_parser(tmp_path):
    # --recipe lists every recipe; gguf takes three of them
    r = cli("convert", FIXTURES / "llama-master", tmp_path / "o.gguf", "--to", "gguf", "--recipe", "onebitllms")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--recipe must be one of transformers, llama.cpp, bitnet.cpp" in r.stderr


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
    r = cli("convert", FIXTURES / "llama-master", tmp_path / "o", *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def _safetensors_dtypes(folder) -> set[str]:
    out = set()
    for f in folder.glob("*.safetensors"):
        raw = f.read_bytes()
        header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
        out |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return out


def test_unpack_takes_f16_as_convert_does(tmp_path):
    packed = FIXTURES / "bitnet-2b4t-packed"
    r = cli("unpack", packed, tmp_path / "u", "--dtype", "f16")
    assert r.returncode == 0, r.stderr
    assert cli("convert", packed, tmp_path / "c", "--to", "hf-bf16", "--dtype", "F16").returncode == 0
    assert _safetensors_dtypes(tmp_path / "u") == {"F16"}
    for f in (tmp_path / "u").glob("*.safetensors"):
        assert f.read_bytes() == (tmp_path / "c" / f.name).read_bytes()


def test_the_error_boundary_lets_typer_exits_and_usage_errors_through():
    from bitconvert.cli.common import error_boundary

    for exc in (typer.Exit(1), typer.Abort(), typer.BadParameter("no")):
        with pytest.raises(type(exc)) as caught:
            with error_boundary():
                raise exc
        assert caught.value is exc
