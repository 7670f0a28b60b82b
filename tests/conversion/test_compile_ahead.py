"""The first conversion after installing compiles numba's loops; it compiles only those the job runs,
ahead of the first weight that needs them, and writes the bytes the next run (loops from the cache)
and the numpy definition write."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_checkpoint

from bitconvert.ternary.fast import jit


@pytest.fixture(scope="module")
def master(tmp_path_factory) -> Path:
    # linears of 1024 x 1024 values: as large as the compiled loops start at (jit.MIN_VALUES)
    out = tmp_path_factory.mktemp("large") / "master"
    return make_checkpoint(out, "bitnet-2b4t", "master", hidden=1024, intermediate=1024, layers=1, heads=8, kv_heads=8)


def _digest(path: Path) -> str:
    """The weights' bytes: every safetensors file, or a GGUF's tensor table and data section (its
    header records the command line, which names each run's DST)."""
    h = hashlib.sha256()
    if path.is_file():
        from bitconvert.formats.gguf.parser import GGUFFile

        f = GGUFFile(path)
        h.update(repr([(t.name, t.type_name, t.shape, t.offset) for t in f.tensors.values()]).encode())
        with open(path, "rb") as raw:
            raw.seek(f.data_start)
            h.update(raw.read())
        return h.hexdigest()
    for f in sorted(p for p in path.iterdir() if p.suffix == ".safetensors"):
        h.update(f.read_bytes())
    return h.hexdigest()


def _convert(args: list, env: dict) -> None:
    proc = subprocess.run([sys.executable, "-m", "bitconvert", *map(str, args), "--force"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _args(to: list, master: Path, dst: Path) -> list:
    return [to[0], master, dst, *to[1:]]


def _compiled_in(cache: Path) -> set[str]:
    """The loops numba compiled into ``cache`` (its index files are named after them)."""
    return {p.name.split(".")[1].split("-")[0].lstrip("_") for p in cache.rglob("*.nbi")}


@pytest.mark.parametrize(
    "to, kernels",
    [
        (["pack"], {"block_abs_sums", "pack_rows"}),
        (["convert", "--to", "gguf", "--gguf-type", "tq2_0"], {"block_abs_sums", "codes_flat", "pack_code_planes"}),
        (["convert", "--to", "gguf", "--gguf-type", "i2_s"], {"block_abs_sums", "codes_flat", "pack_code_planes"}),
    ],
)
def test_first_run_compiles_what_the_job_runs_and_writes_the_same_bytes(master, tmp_path, to, kernels):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    suffix = ".gguf" if "gguf" in to else ""
    outs = {run: tmp_path / f"{run}{suffix}" for run in ("first", "second", "numpy")}
    _convert(_args(to, master, outs["first"]), {"NUMBA_CACHE_DIR": str(cache)})
    assert _compiled_in(cache) == kernels  # only the loops this job runs
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.nbi")}
    _convert(_args(to, master, outs["second"]), {"NUMBA_CACHE_DIR": str(cache)})
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.nbi")} == stamps  # loaded, not compiled again
    _convert(_args(to, master, outs["numpy"]), {"BITCONVERT_NO_JIT": "1"})
    assert _digest(outs["first"]) == _digest(outs["second"]) == _digest(outs["numpy"])


def test_each_loop_compiles_as_one_function(tmp_path):
    """numba compiles every numpy function a loop calls (``np.empty``, ``min``, ``view``, slice
    assignment) as a function of its own, each costing the user's first conversion a tenth of a
    second or more: with an empty cache, warming every loop compiles the loops' own definitions and
    nothing else (pack_code_planes twice: for TQ2_0's strided blocks and I2_S's contiguous ones)."""
    code = (
        "from numba.core import event\n"
        "from bitconvert.ternary.fast import jit\n"
        "compiled = []\n"
        "class Seen(event.Listener):\n"
        "    def on_start(self, e): compiled.append(e.data['dispatcher'].py_func.__qualname__)\n"
        "    def on_end(self, e): pass\n"
        "event.register('numba:compile', Seen())\n"
        "assert all(k.get() is not None for k in jit._KERNELS.values())\n"
        "print(' '.join(compiled))\n"
    )
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loops = ["_block_abs_sums", "_pack_rows", "_codes_flat", "_pack_code_planes", "_pack_code_planes"]
    assert proc.stdout.split() == loops


def test_the_command_lines_numba_loads_without_scipys_blas(tmp_path):
    """numba imports scipy.linalg's BLAS wrappers as it starts (0.15 s of Python holding the lock, on
    every run): a process whose numba is the conversion's alone loads it without them, and scipy.linalg
    still imports afterwards. The command line's own process is one."""
    pytest.importorskip("scipy.linalg")
    code = (
        "import sys\n"
        "from bitconvert.ternary.fast import jit\n"
        "assert jit.kernels().block_abs_sums is not None\n"
        "print('scipy.linalg' in sys.modules)\n"
        "import scipy.linalg, numpy\n"
        "print(scipy.linalg.norm(numpy.ones(4)))\n"
    )
    run = {k: v for k, v in os.environ.items() if k != "BITCONVERT_NUMBA_WITHOUT_SCIPY"}
    for flag, loaded in (("1", "False"), (None, "True")):
        env = {**run, "NUMBA_CACHE_DIR": str(tmp_path / "cache")} | (
            {"BITCONVERT_NUMBA_WITHOUT_SCIPY": flag} if flag else {}
        )
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [loaded, "2.0"]
    probe = (
        "import atexit, os, sys\n"
        "from bitconvert.cli import main\n"
        "atexit.register(lambda: print(os.environ.get('BITCONVERT_NUMBA_WITHOUT_SCIPY'), file=sys.stderr))\n"
        "sys.argv = ['bitconvert', '--version']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], env=run, capture_output=True, text=True, timeout=600)
    assert proc.stderr.strip().splitlines()[-1] == "1"  # the command line sets it for its process


def test_small_jobs_compile_nothing(tmp_path):
    # the bundled fixtures are below jit.MIN_VALUES: numba is neither imported nor run
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    code = (
        "import sys; from bitconvert.convert import convert\n"
        f"convert({str(ROOT / 'fixtures' / 'bitnet-2b4t-master')!r}, {str(tmp_path / 'out')!r}, 'hf-packed')\n"
        "print('numba' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False" and _compiled_in(cache) == set()


def test_prepare_compiles_in_the_background_and_callers_meanwhile_run_numpy(monkeypatch):
    """While the background thread compiles a loop, callers get None (they run the numpy definition:
    nobody waits for the compiler); once it is compiled every caller gets the same loop."""
    started, release = threading.Event(), threading.Event()

    def slow_warm_up(k):  # holds the compilation open until the callers have asked
        started.set()
        release.wait(60)
        jit._warm_codes_flat(k)

    kernel = jit._Kernel("codes_flat", slow_warm_up)
    monkeypatch.setitem(jit._KERNELS, "codes_flat", kernel)
    jit.prepare("codes_flat")
    workers = [t for t in threading.enumerate() if t.name == "bitconvert-jit"]
    assert started.wait(60)
    during = [jit.kernels().codes_flat for _ in range(3)]
    release.set()
    for t in workers:
        t.join()
    after = [jit.kernels().codes_flat for _ in range(3)]
    assert during == [None, None, None]
    assert after[0] is not None and all(g is after[0] for g in after)
    assert not any(t.daemon for t in workers)  # the process lets it finish (the cache is written) before exiting
    bits = np.array([0x3F80, 0xBF80, 0x0001, 0x8001], dtype=np.uint16)  # 1.0, -1.0, tiny, -tiny
    out = np.empty(4, dtype=np.uint8)
    after[0](bits, 0x3F00, out, 0, 4)
    assert out.tolist() == [1, 255, 0, 0]


def test_a_loop_that_does_not_compile_leaves_its_callers_on_numpy(monkeypatch):
    def not_compilable(bits, threshold, out, start, stop):
        return {"a dict": object()}  # numba cannot type this: the compilation fails

    monkeypatch.setitem(jit._KERNELS, "codes_flat", jit._Kernel("codes_flat", jit._warm_codes_flat))
    monkeypatch.setattr(jit, "_codes_flat", not_compilable)
    monkeypatch.setattr(jit, "MIN_VALUES", 0)
    assert jit.kernels() is not None and jit.kernels().codes_flat is None
    from bitconvert.ternary.fast.bf16_codes import codes_into

    bits = np.array([0x3F80, 0xBF80, 0x0001, 0x8001], dtype=np.uint16)
    out = np.empty(4, dtype=np.uint8)
    codes_into(bits, 0x3F00, out)  # the numpy definition
    assert out.tolist() == [1, 255, 0, 0]
