"""The real ``bitconvert`` process when the world fails it: a write past the file-size limit, a full or
read-only file system, an unexpected exception (exit 3, a traceback only with --debug), SIGTERM
mid-write (exit 130) and SIGKILL (its staging removed by the next run). Each failure is one
stderr line, and neither DST nor staging is left."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, one_line_error, run_cli
from refusals import copy_fixture, leftovers, tree_digest

MASTER = FIXTURES / "bitnet-2b4t-master"
PACKED = FIXTURES / "bitnet-2b4t-packed"


@pytest.fixture
def src(tmp_path) -> Path:
    return copy_fixture(tmp_path, MASTER.name)


def _limit_file_size():
    # any write beyond 20 kB fails with EFBIG (Python ignores SIGXFSZ, so the write raises instead)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_file_too_large_is_one_line_and_leaves_nothing(src, tmp_path):
    before = tree_digest(src)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bitconvert", "pack", str(src), str(out / "dst")],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=600,
    )
    one_line_error(proc, 1, "error:", str(out / "dst"), "File too large")
    assert list(out.iterdir()) == []
    assert tree_digest(src) == before


def _in_private_mount(tmp_path: Path, mount_opts: str, cli_args: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """Run the CLI with a small tmpfs mounted at tmp_path/mnt in a private mount namespace; returns the
    process and what the tmpfs held afterwards (it vanishes with the namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", str(mnt)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot mount a tmpfs in a user namespace here")
    args = " ".join(f"'{a}'" for a in cli_args)
    script = (
        f"mount -t tmpfs -o {mount_opts} tmpfs '{mnt}' || exit 99\n"
        f"'{sys.executable}' -m bitconvert {args}\nrc=$?\necho \"LEFT:$(ls -A '{mnt}')\"\nexit $rc\n"
    )
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 99, proc.stderr
    left = proc.stdout.rsplit("LEFT:", 1)[1].strip()
    return proc, left


def test_disk_full_is_one_line_and_leaves_nothing(src, tmp_path):
    before = tree_digest(src)
    proc, left = _in_private_mount(tmp_path, "size=16k", ["pack", str(src), str(tmp_path / "mnt" / "dst")])
    one_line_error(proc, 1, "error:", str(tmp_path / "mnt" / "dst"), "No space left on device")
    assert left == ""
    assert tree_digest(src) == before


def test_read_only_output_folder_is_one_line(src, tmp_path):
    args = ["convert", str(src), str(tmp_path / "mnt" / "x.gguf"), "--to", "gguf", "--allow-fallback"]
    proc, left = _in_private_mount(tmp_path, "ro", args)
    one_line_error(proc, 1, "error:", "Read-only file system", str(tmp_path / "mnt"))
    assert left == ""


# An unexpected exception (a bug) injected into a real command: the entry point is bitconvert's own.
_BROKEN = (
    "import sys, bitconvert.describe as d\n"
    "def broken(*a, **k):\n    raise ZeroDivisionError('division by zero')\n"
    "d.describe_checkpoint = broken\n"
    "from bitconvert.cli import main\nsys.argv[0] = 'bitconvert'\nmain()\n"
)


def test_unexpected_exception_is_one_line_with_its_own_exit_code():
    proc = subprocess.run([sys.executable, "-c", _BROKEN, "inspect", str(PACKED)], capture_output=True, text=True)
    line = one_line_error(proc, 3)
    assert line == "internal error: ZeroDivisionError: division by zero (rerun with --debug for the traceback)"


def test_debug_keeps_the_traceback():
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN, "--debug", "inspect", str(PACKED)], capture_output=True, text=True
    )
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_sigterm_mid_write_leaves_nothing(tiny_checkpoint, tmp_path):
    """SIGTERM in the middle of writing: no DST, no staging directory."""
    # the 0.5 GB master of the peak-memory test: long enough to write that the signal lands mid-way
    src = tiny_checkpoint("llama", "master", hidden=1024, intermediate=4096, layers=16, heads=8, kv_heads=8)
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "bitconvert", "pack", str(src), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if out.exists():
        pytest.skip("conversion finished before the signal arrived")
    assert proc.returncode == 130, err
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def big_master(tiny_checkpoint) -> Path:
    """A master large enough that packing it takes a moment (about 100 MB, the Nanotron peak-memory test's)."""
    return tiny_checkpoint("llama", "master", hidden=512, intermediate=1536, layers=16, heads=8, kv_heads=8)


def test_sigkill_leftover_is_removed_by_the_next_run(big_master, tmp_path):
    dst = tmp_path / "dst"
    proc = subprocess.Popen([sys.executable, "-m", "bitconvert", "pack", str(big_master), str(dst)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not leftovers(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert leftovers(tmp_path), "the pack ended before its staging could be seen"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].endswith(".partial") and not dst.exists()
    again = run_cli("pack", big_master, dst)
    assert again.returncode == 0, again.stderr
    assert leftovers(tmp_path) == [] and dst.is_dir()
