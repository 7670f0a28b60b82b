"""What the command line prints where: requested output alone on stdout (unpadded in a pipe), notes
and warnings as whole lines on stderr, --quiet; usage errors as one line (with verify's JUnit and
JSON reports); did-you-mean; a .safetensors file as SRC; inspect's family and GGUF architecture;
Nanotron reshards in the source's flavor."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from conftest import FIXTURES, run_cli

PACKED_256 = FIXTURES / "bitnet-2b4t-256-packed"
#: the warning a TQ2_0 file of a relu² model gets (upstream llama.cpp runs `bitnet` with SiLU)
SILU_WARNING = "warning: upstream llama.cpp runs the bitnet architecture with SiLU"


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "╭" not in stderr and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    """``convert fixtures/bitnet-2b4t-256-packed x.gguf --to gguf`` as a pipe sees it."""
    path = tmp_path_factory.mktemp("gguf") / "x.gguf"
    return path, run_cli("convert", PACKED_256, path, "--to", "gguf")


# --- streams ----------------------------------------------------------------------------------


def test_warnings_go_to_stderr_whole_and_stdout_is_unpadded(gguf, tmp_path):
    _, r = gguf
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stdout and "note:" not in r.stdout
    assert "bytes written" in r.stdout  # the requested output stays on stdout
    assert all(line == line.rstrip() for line in r.stdout.splitlines()), "padded lines on stdout"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    # one line each, never cut at a console's width (rich assumes 80 columns off a terminal): the
    # whole text the JSON report carries
    reported = json.loads(run_cli("convert", PACKED_256, tmp_path / "j.gguf", "--to", "gguf", "--json").stdout)
    assert warnings == [f"warning: {w}" for w in reported["warnings"]]
    assert warnings[0].startswith(SILU_WARNING) and len(warnings[0]) > 80


def test_quiet_silences_notes_and_warnings_only(tmp_path):
    for args in (("--quiet", "convert", PACKED_256, tmp_path / "a.gguf", "--to", "gguf"),
                 ("convert", PACKED_256, tmp_path / "b.gguf", "--to", "gguf", "-q")):  # fmt: skip
        r = run_cli(*args)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "bytes written" in r.stdout
    r = run_cli("convert", PACKED_256, tmp_path / "c.gguf", "--to", "gguf", "--quiet", "--json")
    assert r.returncode == 0 and r.stderr == ""
    assert any(w.startswith("upstream llama.cpp runs") for w in json.loads(r.stdout)["warnings"])  # still reported
    # errors are not silenced
    r = run_cli("--quiet", "inspect", tmp_path / "missing")
    assert r.returncode == 2 and one_line(r.stderr).startswith("error: ")


def test_a_verify_note_goes_to_stderr(tmp_path):
    latent = FIXTURES / "bitnet-2b4t-256-master"
    r = run_cli("verify", latent, "--roundtrip", "gguf")
    assert r.returncode == 0, r.stderr
    assert "note:" not in r.stdout and "note: SRC holds latent float weights" in r.stderr
    assert run_cli("verify", latent, "--roundtrip", "gguf", "--quiet").stderr == ""


# --- inspect: the family apart from the GGUF architecture ---------------------------------------


def test_inspect_names_the_family_and_the_files_own_architecture(gguf):
    path, _ = gguf
    text = run_cli("inspect", path, "--no-stats")
    head = text.stdout.splitlines()[0]
    assert "model family bitnet-b1.58 (BitNet b1.58 2B-4T" in head and head.endswith("GGUF architecture bitnet")
    info = json.loads(run_cli("inspect", path, "--no-stats", "--json").stdout)
    assert (info["family"], info["gguf_architecture"]) == ("bitnet-b1.58", "bitnet")
    assert info["family_title"].startswith("BitNet b1.58 2B-4T")
    i2s = path.with_name("i2s.gguf")
    assert run_cli("convert", PACKED_256, i2s, "--to", "gguf", "--gguf-type", "i2_s", "-q").returncode == 0
    # bitnet.cpp names the architecture after the model: the file says so, the family is the same
    info = json.loads(run_cli("inspect", i2s, "--no-stats", "--json").stdout)
    assert (info["family"], info["gguf_architecture"]) == ("bitnet-b1.58", "bitnet-b1.58")
    head = run_cli("inspect", PACKED_256, "--no-stats").stdout.splitlines()[0]
    assert "model family bitnet-b1.58" in head and "GGUF" not in head


# --- usage errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("verify", "x", "--bogus"), "No such option: --bogus"),
        (("verify",), "Missing argument 'SRC'"),
        (("verfy", "x"), "Did you mean 'verify'?"),
        (("convert", "a", "b", "--to", "ggfu"), "'ggfu' is not one of bitnet-gpu, gguf, hf-bf16, hf-packed, nanotron; "
                                                "did you mean 'gguf'?"),
        (("pack", "a", "b", "--linear-class", "autobitlinaer"), "did you mean 'autobitlinear'"),
    ],
)
def test_a_usage_error_is_one_line(args, needle):
    r = run_cli(*args)
    line = one_line(r.stderr)
    assert r.returncode == 2 and line.startswith("error: ") and needle in line, r.stderr
    assert "--help" in line


def test_a_choice_far_from_every_other_gets_no_suggestion():
    line = one_line(run_cli("convert", "a", "b", "--to", "zzzz").stderr)
    assert "'zzzz' is not one of" in line and "did you mean" not in line


def junit_error(path) -> str:
    """The message of the one error case of a JUnit report."""
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite.get("errors") == "1" and suite.get("tests") == "1"
    cases = suite.findall("testcase")
    assert len(cases) == 1 and cases[0].find("failure") is None
    return cases[0].find("error").get("message")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("nonexist",), "nonexist: no such file or directory"),
        (("nonexist", "--bogus"), "No such option: --bogus"),
        (("x", "--against"), "Option '--against' requires an argument"),
        ((), "Missing argument 'SRC'"),
        ((str(PACKED_256), "--recipe", "transformers"), "--recipe is used by --reproduce only"),
    ],
)
def test_verify_writes_its_junit_report_on_every_exit(tmp_path, args, needle):
    report = tmp_path / "r.xml"
    r = run_cli("verify", "--junit", report, *args)  # first: an option at the end may take the next word
    assert r.returncode == 2 and needle in one_line(r.stderr), r.stderr
    assert needle in junit_error(report)
    r = run_cli("verify", "--junit", report, "--json", *args)
    data = json.loads(r.stdout)
    assert r.returncode == 2 and data["passed"] is False and needle in data["error"] and data["exit_code"] == 2


def test_verify_junit_names_src_from_the_command_line(tmp_path):
    report = tmp_path / "r.xml"
    run_cli("verify", "--junit", report, "--against", "ref", "my-src", "--bogus")
    src = ET.parse(report).getroot().find("testsuite/properties/property[@name='src']").get("value")
    assert src == "my-src"


# --- paths --------------------------------------------------------------------------------------


def test_a_safetensors_file_as_src_says_to_pass_its_folder():
    weights = PACKED_256 / "model.safetensors"
    for command in (("inspect",), ("verify",), ("convert", "--to", "gguf")):
        args = (command[0], weights, *(("out.gguf", *command[1:]) if len(command) > 1 else ()))
        r = run_cli(*args)
        line = one_line(r.stderr)
        assert r.returncode == 2 and f"pass its folder ({PACKED_256})" in line, r.stderr


def test_a_mistyped_path_gets_the_close_names_beside_it(tmp_path):
    r = run_cli("inspect", FIXTURES / "bitnet-2b4t-pakced")
    line = one_line(r.stderr)
    assert r.returncode == 2 and "no such file or directory; did you mean" in line
    assert str(FIXTURES / "bitnet-2b4t-packed") in line
    r = run_cli("verify", PACKED_256, "--against", FIXTURES / "bitnet-2b4t-256-mastr")
    assert f"did you mean {FIXTURES / 'bitnet-2b4t-256-master'}" in one_line(r.stderr)
    r = run_cli("inspect", tmp_path / "nothing-like-it")
    assert one_line(r.stderr).endswith("nothing-like-it: no such file or directory")
    # the writing commands, which refuse a missing SRC before loading any writer, say the same
    for command in (("pack",), ("unpack",), ("convert", "--to", "gguf")):
        r = run_cli(command[0], FIXTURES / "bitnet-2b4t-pakced", tmp_path / "out", *command[1:])
        line = one_line(r.stderr)
        assert r.returncode == 2 and f"did you mean {FIXTURES / 'bitnet-2b4t-packed'}" in line, (command, line)
        assert not (tmp_path / "out").exists()


# --- Nanotron reshards ------------------------------------------------------------------------------


def test_a_reshard_keeps_the_sources_flavor(tmp_path):
    """A pr178 checkpoint resharded without --nanotron-flavor stays pr178 and needs no --allow-lossy
    (what pr178 cannot hold, it lacks already); asking for pr180 stops and names pr178."""
    nt = tmp_path / "nt178"
    r = run_cli("convert", FIXTURES / "llama-master", nt, "--to", "nanotron", "--nanotron-flavor", "pr178",
                "--allow-lossy", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    resharded = tmp_path / "tp2"
    r = run_cli("convert", nt, resharded, "--to", "nanotron", "--tp", "2", "--json")
    assert r.returncode == 0, r.stderr
    warnings = json.loads(r.stdout)["warnings"]
    assert warnings and all(w.startswith("lost in Nanotron (pr178)") and w.endswith("(as in SRC, a pr178 checkpoint)")
                            for w in warnings if w.startswith("lost"))  # fmt: skip
    info = json.loads(run_cli("inspect", resharded, "--json", "--no-stats").stdout)
    assert info["nanotron_flavor"] == "pr178"
    assert "Nanotron flavor pr178" in run_cli("inspect", resharded, "--no-stats").stdout.splitlines()[0]
    assert run_cli("verify", resharded, "--against", nt).returncode == 0
    r = run_cli("convert", nt, tmp_path / "pr180", "--to", "nanotron", "--nanotron-flavor", "pr180")
    line = one_line(r.stderr)
    assert r.returncode == 1 and "or try --nanotron-flavor pr178 (SRC's own" in line
    assert not (tmp_path / "pr180").exists()
    # a master (not a Nanotron source) still stops without --allow-lossy
    r = run_cli("convert", FIXTURES / "llama-master", tmp_path / "m", "--to", "nanotron", "--nanotron-flavor", "pr178")
    assert r.returncode == 1 and "Pass --allow-lossy" in one_line(r.stderr)


@pytest.mark.parametrize(
    ("raised", "code", "needle"),
    [
        (OSError(28, "No space left on device", "/scratch/x"), 1, "/scratch/x: No space left on device"),
        (RuntimeError("a bug"), 3, "RuntimeError: a bug"),
    ],
)
def test_verify_reports_an_os_error_or_a_bug_too(tmp_path, monkeypatch, raised, code, needle):
    """Not only bitconvert's own errors: a full disk or a bug mid-run still leaves the JUnit error case."""
    from typer.testing import CliRunner

    import bitconvert.verify
    from bitconvert.cli import app

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(bitconvert.verify, "run", fail)
    report = tmp_path / "r.xml"
    result = CliRunner().invoke(app, ["verify", str(PACKED_256), "--junit", str(report), "--json"])
    assert result.exit_code == code
    assert needle in junit_error(report)
    data = json.loads(result.stdout)
    assert data["exit_code"] == code and needle in data["error"]
