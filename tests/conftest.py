"""Shared test helpers: fixture paths, the command line (in this process and as a real process), one
session-wide set of tiny checkpoints, the peers' outputs every group compares with, and tensor
readers that bypass bitconvert.

The tests are grouped by behaviour (tests/<group>/test_*.py); every module name is unique across the
tree, so the groups need no ``__init__.py`` and ``python3 -m pytest tests/<group>/<file>`` runs alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from safetensors import safe_open

# Triton decides at its first import whether it compiles or interprets: the kernel tests need its
# interpreter for CPU tensors, so ask for it before any test module can import triton (a GPU run sets
# TRITON_INTERPRET=0 itself; tests that need the compiler start a process without it).
os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT))
# CLI subprocesses import this checkout's bitconvert, whichever copy is installed
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

from fixtures.make_fixtures import FIXTURES as FIXTURE_KINDS  # noqa: E402
from fixtures.make_fixtures import fixture_path, make_checkpoint  # noqa: E402,F401

#: rows of 256 values fill the blocks of GGUF's TQ1_0/TQ2_0 (and I2_S's): the shape of every wide checkpoint
WIDE = {"hidden": 256, "intermediate": 512, "layers": 2, "heads": 4, "kv_heads": 2}
WIDE_SEED = 5


@pytest.fixture(params=[f"{k}-{l}" for k, l in FIXTURE_KINDS])
def fixture_dir(request) -> Path:
    """Each shipped fixture checkpoint in turn."""
    return FIXTURES / request.param


def lossless_llama(out: Path) -> Path:
    """The Llama fixture master with RoPE base 10000, copied to ``out``: a Llama-architecture BitNet
    model Nanotron's PR #180 at e1c3c1a5 (flavor pr178) holds whole."""
    src = Path(shutil.copytree(FIXTURES / "llama-master", out))
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_theta"] = 10000.0
    (src / "config.json").write_text(json.dumps(cfg))
    return src


# --- the command line -------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m bitconvert ARGS`` as a user would; returns the completed process.

    For what only a real process shows: start-up imports, signals, peak memory, the entry point's
    own exit codes, an environment read at start-up, stdout and stderr as two pipes. Everything else
    goes through :func:`cli`, which runs the same app in this process.
    """
    return subprocess.run(
        [sys.executable, "-m", "bitconvert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


@dataclass
class CliResult:
    """What one in-process command left: its exit code and its two output streams."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run ``bitconvert ARGS`` in this process through Typer's runner, inside the app's error boundary.

    ``bitconvert.cli.app`` is what the entry point runs (``main`` adds only the fast exit), so exit
    codes and the one-line errors are the real ones; stderr is captured apart from stdout. An
    exception that escapes the app is raised here rather than turned into an exit code. ``env``
    adds to the environment for the run; ``cwd`` runs it from that directory.
    """
    from typer.testing import CliRunner

    from bitconvert.cli import app

    with _cwd(cwd):
        r = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    return CliResult(r.exit_code, r.stdout, r.stderr)


@contextlib.contextmanager
def _cwd(path: Path | None):
    if path is None:
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def one_line_error(r, code: int = 1, *needles: str) -> str:
    """The single stderr line of a failed command (exit ``code``, no traceback), holding every needle."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def read_all(path: Path) -> dict:
    """Every tensor of a safetensors file or sharded directory, read with the official library."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


# --- one set of inputs for the whole session ----------------------------------------------------------


def _fingerprint(path: Path) -> dict[str, tuple[int, int]]:
    """Each file's size and modification time: any write changes them, and large inputs cost no read."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files}


class SharedInputs:
    """Inputs built once per test session and handed to every test that asks: read them, never write.

    Under pytest-xdist the workers share one folder, and a lock lets the first worker build each
    input while the others wait for it; a plain run builds into its own temporary folder. Each
    input's files are fingerprinted when first handed out and checked when the session ends, so a
    test that changes a shared input (instead of its own copy) fails the run.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.handed: dict[Path, dict[str, tuple[int, int]]] = {}

    def get(self, name: str, build: Callable[[Path], Path]) -> Path:
        """``root/name``, made by ``build(folder) -> path inside it`` if no worker has made it yet."""
        folder = self.root / name
        done = folder / ".done"
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                if folder.exists():
                    shutil.rmtree(folder)  # a build that failed half way
                folder.mkdir()
                made = build(folder)
                done.write_text(str(made.relative_to(folder)))
        path = folder / done.read_text()
        return self.hand_out(path)

    def hand_out(self, path: Path) -> Path:
        if path not in self.handed:
            self.handed[path] = _fingerprint(path)
        return path

    def changed(self) -> list[str]:
        return [str(p) for p, digest in self.handed.items() if _fingerprint(p) != digest]


@pytest.fixture(scope="session")
def shared_inputs(tmp_path_factory) -> SharedInputs:
    base = tmp_path_factory.getbasetemp()
    # xdist workers each get basetemp/popen-gwN under one session folder; a plain run owns basetemp
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-inputs"
    root.mkdir(exist_ok=True)
    inputs = SharedInputs(root)
    yield inputs
    changed = inputs.changed()
    assert not changed, f"a test wrote into shared inputs (copy them first): {changed}"


@pytest.fixture(scope="session")
def tiny_checkpoint(shared_inputs) -> Callable[..., Path]:
    """``tiny_checkpoint(kind, layout="master", *, wide=False, seed=None, **dims) -> Path``.

    ``kind`` is a family of fixtures/make_fixtures.py (bitnet-2b4t, 1bitllm, llama), ``layout`` master
    or packed. With nothing else it is the shipped fixture (64 wide, two layers); ``wide=True`` gives
    the 256-wide shape GGUF's blocks need (:data:`WIDE`); other ``dims`` (hidden, intermediate,
    layers, heads, kv_heads, linear_class) ask for a specific shape. Built once per session.
    """

    def get(kind: str, layout: str = "master", *, wide: bool = False, seed: int | None = None, **dims) -> Path:
        if not wide and seed is None and not dims:
            return shared_inputs.hand_out(FIXTURES / f"{kind}-{layout}")
        spec = {**(WIDE if wide else {}), **dims}
        seed = (WIDE_SEED if wide else 0) if seed is None else seed
        name = "-".join([kind, layout, *(f"{k}{v}" for k, v in sorted(spec.items())), f"seed{seed}"])
        return shared_inputs.get(
            name, lambda folder: make_checkpoint(folder / f"{kind}-{layout}", kind, layout, seed=seed, **spec)
        )

    return get


class _WideCheckpoints:
    """``wide_checkpoint["llama-packed"]``: ``tiny_checkpoint("llama", "packed", wide=True)``."""

    def __init__(self, get: Callable[..., Path]) -> None:
        self._get = get

    def __getitem__(self, name: str) -> Path:
        kind, layout = name.rsplit("-", 1)
        return self._get(kind, layout, wide=True)


@pytest.fixture(scope="session")
def wide_checkpoint(tiny_checkpoint) -> _WideCheckpoints:
    """The wide (256-value rows) checkpoint of each family and layout, by ``"kind-layout"``."""
    return _WideCheckpoints(tiny_checkpoint)


@pytest.fixture(scope="session")
def nanotron_masters(tiny_checkpoint) -> dict[str, Path]:
    """A master of each family whose four key/value heads split 1, 2 and 4 ways (Nanotron needs kv_heads % tp == 0)."""
    return {kind: tiny_checkpoint(kind, "master", kv_heads=4) for kind in ("bitnet-2b4t", "1bitllm", "llama")}


@pytest.fixture(scope="session")
def converted(shared_inputs) -> Callable[..., Path]:
    """``converted(src, fmt, **options) -> Path``: ``src`` converted once per session (``model.gguf``
    for GGUF, a folder otherwise). Tests that look at what a conversion reports convert themselves."""
    from bitconvert.convert import convert

    def get(src: Path, fmt: str, **options) -> Path:
        key = hashlib.sha256(repr((str(src), fmt, sorted(options.items()))).encode()).hexdigest()[:16]
        leaf = "model.gguf" if fmt == "gguf" else "out"

        def build(folder: Path) -> Path:
            convert(src, folder / leaf, fmt, dict(options))
            return folder / leaf

        return shared_inputs.get(f"{Path(src).name}-{fmt}-{key}", build)

    return get


# --- the peers' own outputs (the producers the recipes reproduce), made once per session ---------------


@pytest.fixture(scope="session")
def onebitllms_output(shared_inputs) -> Path:
    """onebitllms 0.0.4's ``quantize_to_1bit`` run on the shipped llama master."""
    q = pytest.importorskip("onebitllms.utils.quantization_utils", reason="pip install onebitllms==0.0.4 (test extra)")

    def build(folder: Path) -> Path:
        q.quantize_to_1bit(str(FIXTURES / "llama-master"), str(folder / "onebitllms"))
        return folder / "onebitllms"

    return shared_inputs.get("onebitllms-output", build)


@pytest.fixture(scope="session")
def llama_cpp_gguf(shared_inputs) -> Callable[..., Path]:
    """``llama_cpp_gguf(master, outtype) -> Path``: llama.cpp's own converter run on ``master``."""
    from peer_tools import run_llama_cpp_converter

    def get(master: Path, outtype: str = "tq2_0") -> Path:
        name = f"llama.cpp-{master.name}-{hashlib.sha256(str(master).encode()).hexdigest()[:8]}-{outtype}"
        return shared_inputs.get(name, lambda d: run_llama_cpp_converter(master, d / "llamacpp.gguf", outtype))

    return get


@pytest.fixture(scope="session")
def bitnet_cpp_gguf(shared_inputs) -> Callable[[Path], Path]:
    """``bitnet_cpp_gguf(master) -> Path``: bitnet.cpp's own converter (I2_S) run on ``master``."""
    from peer_tools import run_bitnet_converter

    def get(master: Path) -> Path:
        name = f"bitnet.cpp-{master.name}-{hashlib.sha256(str(master).encode()).hexdigest()[:8]}"
        return shared_inputs.get(name, lambda d: run_bitnet_converter(master, d / "bitnet.gguf"))

    return get
