"""What the safety tests share: the whole promise for bad input, checked in one place.

A refusal is one stderr line (``error: ...``) naming the problem, a non-zero exit, no traceback, no
DST and no staging left, and the input unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from conftest import FIXTURES, cli


def snapshot(path: Path) -> dict[str, object]:
    """Every file's bytes (a link's target for links) under ``path``."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(path))] = os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def tree_digest(path: Path) -> dict[str, str]:
    """Every file's sha256 under ``path``."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """What bitconvert staged in ``folder`` and left there."""
    return sorted(p.name for p in folder.iterdir() if "bitconvert" in p.name)


def copy_fixture(tmp_path: Path, name: str = "llama-master") -> Path:
    """A copy of a shipped fixture to break, at ``tmp_path/src``."""
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / name, src)
    return src


def refused(src: Path, tmp_path: Path, *needles: str, command: str = "pack", extra: tuple[str, ...] = ()) -> str:
    """Run ``command SRC DST``; assert the whole promise for bad input; return the one error line."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    dst = out / "dst"
    before = snapshot(src)
    proc = cli(command, src, dst, *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not dst.exists() and list(out.iterdir()) == [], list(out.iterdir())  # no DST, no staging
    assert snapshot(src) == before
    return lines[0]


def expect_failure(tmp_path: Path, src: Path, *needles: str, cmd: str = "pack") -> str:
    """Run ``cmd SRC tmp_path/out``: exit 1 in one line holding every needle, no output, no staging."""
    out = tmp_path / "out"
    r = cli(cmd, src, out)
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(line.splitlines()) == 1, r.stderr
    for n in needles:
        assert n in line, line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging left behind"
    return line
