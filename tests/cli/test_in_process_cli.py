"""The in-process command line the tests drive (``conftest.cli``) is the real app: stdout and stderr
come back apart, and the error boundary's exit codes (0 success, 1 bad input, 2 bad usage, 3 a bug)
and one-line messages come through as the ``bitconvert`` process gives them."""

from __future__ import annotations

import json

from conftest import FIXTURES, cli, one_line_error

PACKED = FIXTURES / "bitnet-2b4t-packed"


def test_stdout_and_stderr_come_back_apart(tmp_path):
    ok = cli("inspect", PACKED, "--json")
    assert ok.returncode == 0 and ok.stderr == ""
    assert json.loads(ok.stdout)["format"] == "hf-packed"
    # a failed check: the report on stdout, the failure and nothing else on stderr
    bad = cli("verify", PACKED, "--target", "llama.cpp")
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "FAILED" not in bad.stderr
    assert "FAIL target.llama.cpp.tensor_types:" in bad.stderr and "FAIL target" not in bad.stdout


def test_the_error_boundarys_exit_codes_and_lines_come_through(tmp_path, monkeypatch):
    import bitconvert.describe as describe

    one_line_error(cli("pack", tmp_path / "absent", tmp_path / "dst"), 2, "no such file or directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x00" * 4)
    one_line_error(cli("pack", broken, tmp_path / "dst"), 1, str(broken), "not a checkpoint")

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(describe, "describe_checkpoint", bug)
    line = one_line_error(cli("inspect", PACKED), 3)
    assert line == "internal error: ZeroDivisionError: division by zero (rerun with --debug for the traceback)"
    assert not (tmp_path / "dst").exists()
