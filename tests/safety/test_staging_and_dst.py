"""Staging and DST: output is staged beside DST and moved into place only when complete; an existing
DST needs --force (and the original comes back if the final rename fails), DST inside SRC is
refused, a DST that appears meanwhile is never replaced, a live run's staging is never removed
while a dead one's is, and a half-finished swap is put back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, cli, one_line_error
from refusals import copy_fixture, leftovers, tree_digest

MASTER = FIXTURES / "bitnet-2b4t-master"
PACKED = FIXTURES / "bitnet-2b4t-packed"


@pytest.fixture
def src(tmp_path) -> Path:
    return copy_fixture(tmp_path, MASTER.name)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_an_existing_output_needs_force(tmp_path):
    out = tmp_path / "o"
    assert cli("pack", FIXTURES / "llama-master", out).returncode == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    r = cli("pack", FIXTURES / "llama-master", out)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert cli("pack", FIXTURES / "llama-master", out, "--force", "--linear-class", "bitlinear").returncode == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["linear_class"] == "bitlinear"


def test_a_single_file_dst_needs_force(tmp_path):
    dst = tmp_path / "x.gguf"
    dst.write_bytes(b"keep me")
    proc = cli("convert", MASTER, dst, "--to", "gguf")
    one_line_error(proc, 2, "already exists", "--force")
    assert dst.read_bytes() == b"keep me" and leftovers(tmp_path) == []


def test_an_output_inside_the_input_is_refused(tmp_path):
    src = copy_fixture(tmp_path, "llama-master")
    for dst in (src, src / "inner", tmp_path):
        r = cli("pack", src, dst, "--force")
        assert r.returncode == 2, (dst, r.stderr)
    assert listing(src) == listing(FIXTURES / "llama-master")


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


def test_force_puts_the_original_back_through_the_cli(src, tmp_path, monkeypatch):
    """The final rename fails (as on a full or vanished file system); everything else is the real command."""
    from bitconvert.io import staging

    dst = tmp_path / "dst"
    assert cli("pack", PACKED, dst).returncode == 0
    original = tree_digest(dst)
    real_replace = os.replace

    def failing(a, b):
        if str(a).endswith(".partial"):
            raise OSError(5, "Input/output error", str(b))
        return real_replace(a, b)

    monkeypatch.setattr(staging.os, "replace", failing)
    proc = cli("pack", src, dst, "--force")
    monkeypatch.undo()
    one_line_error(proc, 1, "error:", str(dst), "Input/output error")
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


def test_a_live_runs_staging_is_never_removed(src, tmp_path):
    from bitconvert.io.staging import process_start

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / f".dst.bitconvert-{owner.pid}-{process_start(owner.pid) or 0}-0a1b2c3d.partial"
        live.mkdir()
        (live / "model.safetensors").write_bytes(b"half written")
        # a dead owner: a pid that exists but started at another time is someone else, so gone too
        dead = tmp_path / f".dst.bitconvert-{owner.pid}-1-0a1b2c3e.partial"
        dead.mkdir()
        proc = cli("pack", src, tmp_path / "dst")
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
