"""Every shell example in README.md and docs/*.md is marked, and every offline one runs as written.

Offline blocks run command by command in one folder per block (later commands use earlier
outputs), from a stand-in for the repository root (tests/cli/doc_blocks.py). A pipeline must print
something: `bitconvert ... | jq KEY` exits 0 on empty input, which is how a broken example once
went unnoticed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, read_all
from doc_blocks import MARKERS, ROOT, Block, all_blocks, commands, expected_exit, is_pipeline, run_shell, user_folder

BLOCKS = all_blocks()
OFFLINE_SHELL = [b for b in BLOCKS if b.marker == "offline" and b.looks_like_shell()]
OFFLINE_PYTHON = [b for b in BLOCKS if b.marker == "offline" and b.language == "python"]


def run_block(block: Block, tmp_path):
    """Run each command of an offline shell block; returns the folder it ran in."""
    work, env = user_folder(tmp_path)
    if any(re.search(r"(^|[|;&]\s*)jq\b", c) for c in commands(block)) and shutil.which("jq") is None:
        pytest.skip(f"{block.where} pipes into jq, which is not installed here")
    for command in commands(block):
        r = run_shell(command, work, env)
        expected = expected_exit(command)
        assert r.returncode == expected, f"{block.where}: `{command}` exited {r.returncode}:\n{r.stderr[-2000:]}"
        if is_pipeline(command):
            assert r.stdout.strip() not in ("", "null"), f"{block.where}: `{command}` printed nothing"
    return work


def test_every_shell_example_says_what_it_needs():
    unmarked = [b.where for b in BLOCKS if b.looks_like_shell() and b.marker not in MARKERS]
    assert not unmarked, f"shell examples without a marker ({', '.join(MARKERS)}): {unmarked}"
    runnable = [b for b in BLOCKS if b.looks_like_shell() or b.language == "python"]
    unknown = [b.where for b in runnable if b.marker is not None and b.marker not in MARKERS]
    assert not unknown, f"unknown markers: {unknown}"


def test_the_readme_shows_offline_and_online_examples():
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert sum(b.marker == "offline" for b in readme) >= 3
    hub = "\n".join(b.body for b in readme if b.marker == "online")
    assert "hf://microsoft/bitnet-b1.58-2B-4T-bf16" in hub and "--gguf-type i2_s" in hub
    assert "python3 -m pytest -q -n auto" in (ROOT / "README.md").read_text()  # .ci/run runs it


@pytest.mark.parametrize("block", OFFLINE_SHELL, ids=[b.where for b in OFFLINE_SHELL])
def test_offline_shell_example_runs_as_written(block, tmp_path):
    run_block(block, tmp_path)


@pytest.mark.parametrize("block", OFFLINE_PYTHON, ids=[b.where for b in OFFLINE_PYTHON])
def test_offline_python_example_runs_as_written(block, tmp_path):
    work, env = user_folder(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(block.body + "\n")
    r = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, f"{block.where}:\n{r.stderr[-2000:]}"


def test_the_readmes_gguf_example_comes_back_bit_for_bit(tmp_path):
    """The README's GGUF round trip gives back the packed fixture's tensors, dtype and bytes."""
    (block,) = [b for b in OFFLINE_SHELL if b.path.name == "README.md" and "bitnet-256-back" in b.body]
    work = run_block(block, tmp_path)
    a, b = read_all(FIXTURES / "bitnet-2b4t-256-packed"), read_all(work / "bitnet-256-back")
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype and (a[k] == b[k]).all() for k in a)


def test_a_failing_example_fails_the_test(tmp_path):
    """The runner is not blind: a wrong command, or a pipeline that prints nothing, is caught."""
    wrong = Block(ROOT / "README.md", 1, "bash", "offline", "bitconvert inspect fixtures/no-such-checkpoint")
    with pytest.raises(AssertionError, match="exited 2"):  # a missing SRC is a usage error
        run_block(wrong, tmp_path / "a")
    silent = Block(ROOT / "README.md", 1, "bash", "offline", "bitconvert inspect fixtures/llama-packed --json | jq '.no_such_key'")
    with pytest.raises(AssertionError, match="printed nothing"):
        run_block(silent, tmp_path / "b")
    announced = Block(ROOT / "README.md", 1, "bash", "offline", "bitconvert inspect fixtures/llama-packed  # exit 1")
    with pytest.raises(AssertionError, match="exited 0"):  # an announced failure must happen
        run_block(announced, tmp_path / "d")
    assert not is_pipeline("bitconvert verify x --target llama.cpp  # exit 1: a | in a comment")
    blank = Block(ROOT / "README.md", 1, "bash", "offline", "bitconvert pack fixtures/llama-master \\\n  out/x")
    assert commands(blank) == ["bitconvert pack fixtures/llama-master out/x"]
    with pytest.raises(AssertionError, match="exited 2"):  # a missing output folder is a usage error
        run_block(blank, tmp_path / "c")
