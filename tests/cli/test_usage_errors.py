"""Bad usage exits 2 with one line naming the option or path (a value no option takes, an unknown
format, a missing input, a token id outside the vocabulary, a check that needs what was not given),
and writes nothing; ``--debug`` adds the traceback to a failure."""

from __future__ import annotations

import shutil

import pytest
from conftest import FIXTURES, cli, one_line_error

PACKED = FIXTURES / "bitnet-2b4t-packed"


@pytest.mark.parametrize("args", [["--linear-class", "nope"], ["--max-shard-size", "lots"], ["--dtype", "int4"]])
def test_bad_option_values_exit_2_and_write_nothing(tmp_path, args):
    r = cli("pack", FIXTURES / "llama-master", tmp_path / "o", *args)
    assert r.returncode == 2 and not (tmp_path / "o").exists()


def test_an_unknown_format_or_a_missing_input_exits_2(tmp_path):
    assert cli("convert", FIXTURES / "llama-master", tmp_path / "o", "--to", "onnx").returncode == 2
    assert cli("pack", tmp_path / "nothing", tmp_path / "o").returncode == 2


def test_a_missing_source_is_one_line_naming_it(tmp_path):
    proc = cli("pack", tmp_path / "absent", tmp_path / "dst")
    one_line_error(proc, 2, "no such file or directory")


def test_a_gguf_type_no_writer_takes_exits_2_naming_the_choices(tmp_path):
    r = cli("convert", FIXTURES / "1bitllm-packed", tmp_path / "m.gguf", "--to", "gguf", "--gguf-type", "q4_0")
    assert r.returncode == 2 and "--gguf-type" in r.stderr and "tq2_0" in r.stderr


def test_verify_usage_errors_exit_2(tmp_path):
    assert cli("verify", tmp_path / "nope").returncode == 2
    assert cli("verify", PACKED, "--logits").returncode == 2
    assert cli("verify", PACKED, "--roundtrip", "no-such-format").returncode == 2
    assert cli("verify", PACKED, "--manifest-check", tmp_path / "nope.json").returncode == 2
    r = cli("verify", PACKED, "--against", PACKED, "--logits", "--tokens", "1,x")
    assert r.returncode == 2 and "'x'" in r.stderr
    r = cli("verify", PACKED, "--against", PACKED, "--logits", "--tokens", "1,99999")
    assert r.returncode == 2 and "99999" in r.stderr


def test_debug_shows_the_traceback_of_a_failure(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "bitnet-2b4t-packed", src)
    (src / "model.safetensors").write_bytes(b"\x00" * 4)
    r = cli("--debug", "pack", src, tmp_path / "o")
    assert r.returncode == 1 and "Traceback" in r.stderr
