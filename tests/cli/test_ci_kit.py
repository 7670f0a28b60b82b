"""The CI kit runs: action.yml's steps, the pre-commit hook's entry and docs/ci.md's GitLab job.

Each test takes the commands from the file users get, not a copy, and runs them on the bundled
fixtures; a correct checkpoint passes and a wrong one fails through the same commands.

Stand-ins for what the CI systems themselves provide, and why:
- GitHub: `uses:` steps (actions/setup-python) are GitHub's; the test's own Python stands in.
  `${{ inputs.* }}` and `${{ github.action_path }}` are replaced by the values GitHub would give,
  the step's `env:` is set, and `$GITHUB_OUTPUT` is a file the test reads back.
- Installing: the install commands run as written, into a fresh virtual environment that sees
  this machine's packages (no network: pip is told `PIP_NO_INDEX`, `PIP_NO_DEPS` through its
  environment), from a copy of the checkout (pip builds in the source folder).
- pre-commit: the hook's `entry` is split and called as pre-commit calls it, with `args` and then
  the changed file names appended, `bitconvert` being the one installed in the environment.
- GitLab: the job's `variables` become the environment and each `script` line runs in bash, as a
  GitLab runner does; BITCONVERT_PIP, MODEL and REFERENCE are set to the copy and the fixtures.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES
from doc_blocks import ROOT, fenced_blocks, run_shell

GITHUB_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


@pytest.fixture
def installed(tmp_path):
    """(folder standing in for a user's repository, env whose PATH starts with an empty venv, copy of the checkout)."""
    source = tmp_path / "bitconvert-src"
    source.mkdir()
    for name in ("bitconvert", "pyproject.toml", "README.md", "action.yml", ".pre-commit-hooks.yaml"):
        src = ROOT / name
        (shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
         if src.is_dir() else shutil.copy2(src, source / name))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", HF_HUB_OFFLINE="1", PIP_NO_INDEX="1",
               PIP_NO_DEPS="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    work = tmp_path / "repo"
    work.mkdir()
    (work / "fixtures").symlink_to(FIXTURES)
    return work, env, source


def assert_installed_from(source: Path, env: dict, work: Path) -> None:
    """`bitconvert` on PATH is the one just installed into the venv, not this checkout."""
    r = run_shell("command -v bitconvert && python3 -c 'import bitconvert; print(bitconvert.__file__)'", work, env)
    assert r.returncode == 0, r.stderr
    where = r.stdout.split()
    assert "venv" in where[0] and "venv" in where[1] and str(ROOT) not in where[1], where


# --- GitHub Action --------------------------------------------------------------------------------


def run_action(work: Path, env: dict, source: Path, inputs: dict) -> tuple[int, dict]:
    """Run action.yml's `run:` steps in order with these inputs; returns (exit code, step outputs)."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    values = {f"inputs.{k}": str(v.get("default", "")) for k, v in action["inputs"].items()}
    values.update({f"inputs.{k}": v for k, v in inputs.items()}, **{"github.action_path": str(source)})
    missing = [k for k, v in action["inputs"].items() if v.get("required") and k not in inputs]
    assert not missing, missing
    output_file = work.parent / "github_output"
    output_file.write_text("")
    code = 0
    for step in action["runs"]["steps"]:
        if "run" not in step:
            assert step["uses"].startswith("actions/setup-python@")  # the only step GitHub supplies
            continue
        assert step["shell"] == "bash"
        step_env = {k: GITHUB_EXPR.sub(lambda m: values[m[1]], str(v)) for k, v in step.get("env", {}).items()}
        assert not GITHUB_EXPR.search(step["run"]), "inputs must reach the script through env:, not its text"
        # GitHub's bash runs steps with `bash --noprofile --norc -eo pipefail {0}`
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=work,
                           env={**env, **step_env, "GITHUB_OUTPUT": str(output_file)}, capture_output=True, text=True,
                           timeout=600, check=False)
        code = r.returncode
        if code:
            break
    outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
    declared = {k: GITHUB_EXPR.fullmatch(v["value"])[1] for k, v in action["outputs"].items()}
    return code, {k: outputs.get(ref.split(".")[-1]) for k, ref in declared.items()}


def test_the_action_passes_a_correct_pack_and_reports_it(installed):
    work, env, source = installed
    code, out = run_action(work, env, source, {
        "path": "fixtures/bitnet-2b4t-packed", "against": "fixtures/bitnet-2b4t-master", "target": "transformers",
        "args": "--logits --all", "runtime": "true"})
    assert code == 0 and out["passed"] == "true" and out["exit-code"] == "0", out
    assert_installed_from(source, env, work)
    report = json.loads((work / out["json"]).read_text())
    assert report["passed"] and report["checks_failed"] == 0
    names = {c["name"] for c in report["checks"]}
    assert any(n.startswith("target.transformers.") for n in names) and any("logits" in n for n in names)
    suite = ET.parse(work / out["junit"]).getroot().find("testsuite")
    assert suite.get("failures") == "0" and int(suite.get("tests")) == report["checks_total"]


def test_the_action_fails_the_step_when_a_check_fails(installed):
    work, env, source = installed
    code, out = run_action(work, env, source, {"path": "fixtures/bitnet-2b4t-256-master", "target": "llama.cpp",
                                               "junit": "r.xml", "json": "r.json"})
    assert code == 1 and out == {"passed": "false", "exit-code": "1", "junit": "r.xml", "json": "r.json"}
    failed = [c["name"] for c in json.loads((work / "r.json").read_text())["checks"] if not c["passed"]]
    assert "target.llama.cpp.ffn_activation" in failed
    suite = ET.parse(work / "r.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == len(failed)


# --- pre-commit hook --------------------------------------------------------------------------------


def run_hook(work: Path, env: dict, files: list[str], args: list[str] = ()) -> subprocess.CompletedProcess:
    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "bitconvert-verify" and hook["language"] == "python"
    chosen = [f for f in files if re.search(hook["files"], f)]
    return subprocess.run([*shlex.split(hook["entry"]), *args, *chosen], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def changed(work: Path, *folders: str) -> list[str]:
    """Every file of these folders, as pre-commit names changed files (relative to the repository)."""
    return [str(p.relative_to(work)) for f in folders for p in sorted((work / f).rglob("*")) if p.is_file()]


def install_as_pre_commit_does(work: Path, env: dict, source: Path) -> None:
    """language: python: pre-commit pip-installs the hook's repository into the hook's environment."""
    r = run_shell(f"python3 -m pip install -q {shlex.quote(str(source))}", work, env)
    assert r.returncode == 0, r.stderr
    assert_installed_from(source, env, work)


def test_the_hook_verifies_each_touched_checkpoint_once(installed):
    work, env, source = installed
    install_as_pre_commit_does(work, env, source)
    for name in ("llama-packed", "bitnet-2b4t-packed"):
        shutil.copytree(FIXTURES / name, work / "models" / name)
    for convert in ("bitconvert convert fixtures/bitnet-2b4t-256-packed models/m.gguf --to gguf",
                    "bitconvert convert fixtures/llama-master models/nt --to nanotron --tp 2 --allow-lossy"):
        r = run_shell(convert, work, env)
        assert r.returncode == 0, r.stderr
    r = run_hook(work, env, [*changed(work, "models"), "README.md"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    verified = re.findall(r"^verify (\S+):", r.stdout + r.stderr, re.MULTILINE)  # the summary, on either stream
    assert sorted(verified) == ["models/bitnet-2b4t-packed", "models/llama-packed", "models/m.gguf", "models/nt"], r.stdout
    assert any(f.startswith("models/nt/model/") and f.endswith(".safetensors") for f in changed(work, "models"))
    r = run_hook(work, env, changed(work, "models"), ["--target", "llama.cpp", "--"])
    assert r.returncode == 1 and "target.llama.cpp.ffn_activation" in r.stdout + r.stderr, r.stdout[-2000:]


def test_the_hook_fails_a_broken_checkpoint(installed):
    work, env, source = installed
    install_as_pre_commit_does(work, env, source)
    model = work / "models" / "llama-packed"
    shutil.copytree(FIXTURES / "llama-packed", model)
    assert run_hook(work, env, changed(work, "models")).returncode == 0
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    size = int.from_bytes(data[:8], "little")
    entry = json.loads(data[8:8 + size])["model.layers.0.mlp.down_proj.weight"]
    assert entry["dtype"] == "U8"  # packed codes, four per byte
    data[8 + size + entry["data_offsets"][0]] = 0xFF  # four fields holding 3, which is no ternary code
    weights.write_bytes(bytes(data))
    r = run_hook(work, env, changed(work, "models"))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr


# --- GitLab CI ---------------------------------------------------------------------------------------


def gitlab_job() -> dict:
    (block,) = [b for b in fenced_blocks(ROOT / "docs" / "ci.md") if b.language == "yaml" and b.marker == "gitlab"]
    (job,) = yaml.safe_load(block.body).values()
    return job


@pytest.mark.parametrize("model, reference, expected", [
    ("fixtures/bitnet-2b4t-packed", "fixtures/bitnet-2b4t-master", 0),
    ("fixtures/bitnet-2b4t-packed", "fixtures/llama-packed", 1),
])
def test_the_gitlab_job_passes_equal_checkpoints_and_fails_different_ones(installed, model, reference, expected):
    work, env, source = installed
    job = gitlab_job()
    job_env = {**env, **{k: str(v) for k, v in job["variables"].items()},
               "BITCONVERT_PIP": str(source), "MODEL": model, "REFERENCE": reference}
    code = 0
    for line in job["script"]:
        r = run_shell(line, work, job_env)
        code = r.returncode
        if code:
            break
    assert code == expected, r.stderr[-2000:]
    assert_installed_from(source, job_env, work)
    report = json.loads((work / "verify.json").read_text())
    assert report["passed"] is (expected == 0)
    assert ET.parse(work / "verify.xml").getroot().find("testsuite").get("failures") == str(report["checks_failed"])
    assert set(job["artifacts"]["paths"]) == {"verify.json", "verify.xml"} and job["artifacts"]["when"] == "always"
