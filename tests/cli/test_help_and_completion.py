"""``--help`` lists every choice (``--to``, ``--gguf-type``, ``--recipe``, ``--linear-class``,
``--scale-dtype``, ``--dtype``) and the SRC/DST metavars; shell completion offers the same choices
through the real entry point; building the command line imports no writer, nor numpy, nor torch."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import cli

from bitconvert.formats import CATALOGUE, writer_names

#: --help on one line per option, whatever the terminal
WIDE_TERMINAL = {"COLUMNS": "250"}


def test_pack_help_lists_the_choices():
    r = cli("pack", "--help", env=WIDE_TERMINAL)
    assert r.returncode == 0, r.stderr
    for listed in ("<autobitlinear|bitlinear>", "<bf16|f32>", "<transformers|onebitllms>", "<bf16|f16|f32>"):
        assert listed in r.stdout, listed
    assert "[default: bf16]" in r.stdout and "[default: 5GB]" in r.stdout


def test_convert_help_lists_the_formats_and_gguf_types():
    r = cli("convert", "--help", env=WIDE_TERMINAL)
    assert r.returncode == 0, r.stderr
    assert f"<{'|'.join(writer_names())}>" in r.stdout
    assert "<tq2_0|tq1_0|i2_s|tl1|tl2|f16|bf16|f32>" in r.stdout
    assert "<transformers|onebitllms|llama.cpp|bitnet.cpp|bitnet-gpu>" in r.stdout
    assert "SRC" in r.stdout and "DST" in r.stdout


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
    # the shell named, not detected from the process's ancestors (a CI runner may have no shell among them)
    named = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([sys.executable, "-c", wrapper, "--show-completion", "bash"], capture_output=True, text=True,
                           env=named, timeout=120)
    assert shown.returncode == 0 and "_BITCONVERT_COMPLETE" in shown.stdout, shown.stderr


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
