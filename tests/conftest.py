"""Shared test helpers: fixture paths, a CLI runner, tensor readers that bypass bitconvert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT))
# CLI subprocesses import this checkout's bitconvert, whichever copy is installed
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

from fixtures.make_fixtures import FIXTURES as FIXTURE_KINDS  # noqa: E402
from fixtures.make_fixtures import fixture_path, make_checkpoint  # noqa: E402,F401


@pytest.fixture(params=[f"{k}-{l}" for k, l in FIXTURE_KINDS])
def fixture_dir(request) -> Path:
    """Each shipped fixture checkpoint in turn."""
    return FIXTURES / request.param


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m bitconvert ARGS`` as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "bitconvert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def read_all(path: Path) -> dict:
    """Every tensor of a safetensors file or sharded directory, read with the official library."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out
