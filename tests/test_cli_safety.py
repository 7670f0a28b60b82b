"""The CLI at its boundary, through the real command in a subprocess: every failure ends in one stderr
line with the documented exit code, no traceback, no DST and no staging left, the input unchanged.

Covers output errors (EFBIG, ENOSPC, EROFS), unexpected exceptions (exit 3), stale staging after
SIGKILL, the ``--force`` and no-replace edges of moving into place, and what ``upload`` refuses or
leaves out (symlinks out of SRC, pickles).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, make_checkpoint, run_cli

MASTER = FIXTURES / "bitnet-2b4t-master"
PACKED = FIXTURES / "bitnet-2b4t-packed"


def tree_digest(path: Path) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_one_line_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "bitconvert" in p.name)


@pytest.fixture
def src(tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(MASTER, copy)
    return copy


# --- output errors ------------------------------------------------------------------------------


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
    assert_one_line_failure(proc, 1, "error:", str(out / "dst"), "File too large")
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
    assert_one_line_failure(proc, 1, "error:", str(tmp_path / "mnt" / "dst"), "No space left on device")
    assert left == ""
    assert tree_digest(src) == before


def test_read_only_output_folder_is_one_line(src, tmp_path):
    args = ["convert", str(src), str(tmp_path / "mnt" / "x.gguf"), "--to", "gguf", "--allow-fallback"]
    proc, left = _in_private_mount(tmp_path, "ro", args)
    assert_one_line_failure(proc, 1, "error:", "Read-only file system", str(tmp_path / "mnt"))
    assert left == ""


# --- the boundary -----------------------------------------------------------------------------

# An unexpected exception (a bug) injected into a real command: the entry point is bitconvert's own.
_BROKEN = (
    "import sys, bitconvert.describe as d\n"
    "def broken(*a, **k):\n    raise ZeroDivisionError('division by zero')\n"
    "d.describe_checkpoint = broken\n"
    "from bitconvert.cli import main\nsys.argv[0] = 'bitconvert'\nmain()\n"
)


def test_unexpected_exception_is_one_line_with_its_own_exit_code():
    proc = subprocess.run([sys.executable, "-c", _BROKEN, "inspect", str(PACKED)], capture_output=True, text=True)
    line = assert_one_line_failure(proc, 3)
    assert line == "internal error: ZeroDivisionError: division by zero (rerun with --debug for the traceback)"


def test_debug_keeps_the_traceback():
    proc = subprocess.run(
        [sys.executable, "-c", _BROKEN, "--debug", "inspect", str(PACKED)], capture_output=True, text=True
    )
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_missing_source_stays_a_usage_error(tmp_path):
    proc = run_cli("pack", tmp_path / "absent", tmp_path / "dst")
    assert_one_line_failure(proc, 2, "no such file or directory")


# --- staging ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_master(tmp_path_factory) -> Path:
    """A master large enough that packing it takes a moment (about 50 MB)."""
    return make_checkpoint(
        tmp_path_factory.mktemp("big") / "master", "bitnet-2b4t", "master", hidden=512, intermediate=1536, layers=8
    )


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


def test_live_staging_is_never_removed(src, tmp_path):
    from bitconvert.io.staging import process_start

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / f".dst.bitconvert-{owner.pid}-{process_start(owner.pid) or 0}-0a1b2c3d.partial"
        live.mkdir()
        (live / "model.safetensors").write_bytes(b"half written")
        # a dead owner: a pid that exists but started at another time is someone else, so gone too
        dead = tmp_path / f".dst.bitconvert-{owner.pid}-1-0a1b2c3e.partial"
        dead.mkdir()
        proc = run_cli("pack", src, tmp_path / "dst")
        assert proc.returncode == 0, proc.stderr
        assert live.is_dir() and (live / "model.safetensors").read_bytes() == b"half written"
        assert not dead.exists()
    finally:
        owner.kill()
        owner.wait()


def test_old_left_between_the_two_renames_is_put_back(tmp_path):
    from bitconvert.io.staging import remove_stale

    dst = tmp_path / "model.gguf"
    old = tmp_path / ".model.gguf.bitconvert-999999999-1-0a1b2c3d.old"
    old.write_bytes(b"the original")
    remove_stale(dst)
    assert dst.read_bytes() == b"the original" and not old.exists()


def test_force_restores_the_original_when_the_final_rename_fails(tmp_path, monkeypatch):
    from bitconvert.io import staging

    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"original")
    real_replace = os.replace

    def failing(a, b):
        if str(a).endswith(".partial"):
            raise OSError(28, "No space left on device", str(a))
        return real_replace(a, b)

    monkeypatch.setattr(staging.os, "replace", failing)
    with pytest.raises(OSError):
        with staging.staged_output(dst, directory=False, force=True) as tmp:
            tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"original"
    assert leftovers(tmp_path) == []


# The final rename fails (as on a full or vanished file system); everything else is the real CLI.
_FAILING_RENAME = (
    "import os, sys, bitconvert.io.staging as st\n"
    "real = os.replace\n"
    "def replace(a, b):\n"
    "    if str(a).endswith('.partial'):\n"
    "        raise OSError(5, 'Input/output error', str(b))\n"
    "    return real(a, b)\n"
    "st.os = type('os', (), {**{k: getattr(os, k) for k in dir(os) if not k.startswith('__')}, 'replace': replace})\n"
    "from bitconvert.cli import main\nsys.argv[0] = 'bitconvert'\nmain()\n"
)


def test_force_puts_the_original_back_through_the_cli(src, tmp_path):
    dst = tmp_path / "dst"
    assert run_cli("pack", PACKED, dst).returncode == 0
    original = tree_digest(dst)
    proc = subprocess.run([sys.executable, "-c", _FAILING_RENAME, "pack", str(src), str(dst), "--force"],
                          capture_output=True, text=True, timeout=600)
    assert_one_line_failure(proc, 1, "error:", str(dst), "Input/output error")
    assert tree_digest(dst) == original
    assert leftovers(tmp_path) == []


def test_a_file_dst_that_appears_meanwhile_is_not_replaced(tmp_path):
    from bitconvert.errors import UsageError
    from bitconvert.io.staging import staged_output

    dst = tmp_path / "out.gguf"
    with pytest.raises(UsageError, match="already exists"):
        with staged_output(dst, directory=False, force=False) as tmp:
            tmp.write_bytes(b"ours")
            dst.write_bytes(b"someone else's")  # appears after any existence check
    assert dst.read_bytes() == b"someone else's"
    assert leftovers(tmp_path) == []


def test_an_empty_dir_dst_that_appears_meanwhile_is_not_replaced(tmp_path):
    from bitconvert.errors import UsageError
    from bitconvert.io.staging import staged_output

    dst = tmp_path / "out"
    with pytest.raises(UsageError, match="already exists"):
        with staged_output(dst, directory=True, force=False) as tmp:
            (tmp / "x").write_bytes(b"ours")
            dst.mkdir()  # os.rename would silently replace an empty directory
    assert dst.is_dir() and list(dst.iterdir()) == []
    assert leftovers(tmp_path) == []


def test_single_file_dst_needs_force(tmp_path):
    dst = tmp_path / "x.gguf"
    dst.write_bytes(b"keep me")
    proc = run_cli("convert", MASTER, dst, "--to", "gguf")
    assert_one_line_failure(proc, 2, "already exists", "--force")
    assert dst.read_bytes() == b"keep me" and leftovers(tmp_path) == []


# --- upload -----------------------------------------------------------------------------------


def _offline_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return env


def test_upload_refuses_a_symlink_out_of_src(tmp_path):
    src = tmp_path / "packed"
    shutil.copytree(PACKED, src)
    secret = tmp_path / "token"
    secret.write_text("hf_notreallyasecretbutcouldbe\n")
    (src / "notes.txt").symlink_to(secret)
    before = tree_digest(src)
    proc = run_cli("upload", src, "org/name", "--dry-run", env=_offline_env(tmp_path))
    assert_one_line_failure(proc, 1, str(src / "notes.txt"), str(secret), "outside")
    assert "hf_notreallyasecret" not in proc.stdout
    assert tree_digest(src) == before


def test_upload_follows_the_hf_cache_links_of_a_local_snapshot(tmp_path):
    # the same rule as every reader: a snapshot's files are links into the cache's blobs/
    repo = tmp_path / "hub" / "models--org--name"
    snap = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in PACKED.iterdir() if p.is_file())):
        shutil.copyfile(f, repo / "blobs" / f"blob{i}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    proc = run_cli("upload", snap, "org/name", "--dry-run", "--json", env=_offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    planned = {op["path"] for op in json.loads(proc.stdout)["operations"]}
    assert {p.name for p in PACKED.iterdir() if p.is_file()} <= planned


def test_upload_leaves_pickles_out_and_says_so(tmp_path):
    src = tmp_path / "packed"
    shutil.copytree(PACKED, src)
    (src / "training_args.bin").write_bytes(b"\x80\x04not really a pickle")
    (src / "optimizer.pt").write_bytes(b"PK\x03\x04")
    proc = run_cli("upload", src, "org/name", "--dry-run", "--json", env=_offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    paths = {op["path"] for op in plan["operations"]}
    assert "training_args.bin" not in paths and "optimizer.pt" not in paths and "model.safetensors" in paths
    assert {s["path"] for s in plan["skipped"]} == {"training_args.bin", "optimizer.pt"}
    human = run_cli("upload", src, "org/name", "--dry-run", env=_offline_env(tmp_path))
    assert "skip training_args.bin" in human.stdout and "skip optimizer.pt" in human.stdout
    asked = run_cli("upload", src, "org/name", "--dry-run", "--json", "--include-pickles", env=_offline_env(tmp_path))
    assert asked.returncode == 0, asked.stderr
    assert {"training_args.bin", "optimizer.pt"} <= {op["path"] for op in json.loads(asked.stdout)["operations"]}
