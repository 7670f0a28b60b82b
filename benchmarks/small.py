"""Benchmark: the commands on the bundled fixtures, and every kind of usage refusal, as a user runs them.

    python benchmarks/small.py [--rounds 5] [--json] [--only NAME ...]

Each job is ``python -m bitconvert ...`` in a fresh process (start-up included: on inputs of a few
hundred KB that is nearly all of it), timed from outside; rounds run every job once, in an order
rotated by one each round, so load from other processes spreads over the jobs alike. The table
shows each job's median, fastest and slowest wall time, its median CPU time (user + system: the
steadier figure on a loaded machine) and its exit code (checked: 0 for the
commands, 2 for the refusals), beside two floors: ``python -c pass`` with this interpreter's site
packages, and ``bitconvert --version``. The load average before and after is printed too: on a
shared machine, compare medians taken under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MASTER = FIXTURES / "bitnet-2b4t-master"
MASTER_256 = FIXTURES / "bitnet-2b4t-256-master"  # rows of 256 values: TQ2_0 takes them
PACKED = FIXTURES / "bitnet-2b4t-packed"

#: this checkout's bitconvert, offline (upload --dry-run must not look for a network)
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    HF_HUB_OFFLINE="1",
)


def jobs(tmp: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (arguments of ``python``, the exit code it must end with)."""
    exists = tmp / "exists"
    exists.mkdir(exist_ok=True)
    bc = ["-m", "bitconvert"]
    m, p = str(MASTER), str(PACKED)
    return {
        # floors
        "python -c pass": (["-c", "pass"], 0),
        "bitconvert --version": ([*bc, "--version"], 0),
        # commands
        "pack": ([*bc, "pack", m, str(tmp / "packed"), "--force"], 0),
        "unpack": ([*bc, "unpack", p, str(tmp / "unpacked"), "--force"], 0),
        "convert --to gguf": ([*bc, "convert", str(MASTER_256), str(tmp / "m.gguf"), "--to", "gguf", "--force"], 0),
        "convert --to nanotron": ([*bc, "convert", m, str(tmp / "nt"), "--to", "nanotron", "--allow-lossy",
                                   "--force"], 0),
        "inspect": ([*bc, "inspect", p], 0),
        "inspect --json (master)": ([*bc, "inspect", "--json", m], 0),
        "verify": ([*bc, "verify", p], 0),
        "upload --dry-run": ([*bc, "upload", p, "org/name", "--dry-run"], 0),
        # usage refusals (exit 2)
        "refuse: DST inside SRC": ([*bc, "pack", m, str(MASTER / "x")], 2),
        "refuse: existing DST": ([*bc, "pack", m, str(exists)], 2),
        "refuse: missing SRC": ([*bc, "pack", str(tmp / "absent"), str(tmp / "y")], 2),
        "refuse: option of another format": ([*bc, "convert", m, str(tmp / "y"), "--to", "hf-packed", "--gguf-type", "tq2_0"], 2),
        "refuse: unknown --to": ([*bc, "convert", m, str(tmp / "y"), "--to", "safetensors"], 2),
        "refuse: bad --max-shard-size": ([*bc, "pack", m, str(tmp / "y"), "--max-shard-size", "lots"], 2),
        "refuse: recipe for another format": ([*bc, "convert", m, str(tmp / "y"), "--to", "hf-packed", "--recipe", "llama.cpp"], 2),
        "refuse: verify --tokens without --logits": ([*bc, "verify", p, "--tokens", "1,2"], 2),
        "refuse: verify --atol not a number": ([*bc, "verify", p, "--atol", "x"], 2),
        "refuse: run without a prompt": ([*bc, "run", p], 2),
        "refuse: logits --tokens not ids": ([*bc, "logits", p, "--tokens", "a,b", "--out", str(tmp / "l.npy")], 2),
        "refuse: upload to a bad repo id": ([*bc, "upload", p, "not a repo", "--dry-run"], 2),
    }  # fmt: skip


def run_once(args: list[str], code: int, name: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != code:
            err.seek(0)
            text = err.read().decode(errors="replace")
            raise SystemExit(f"{name}: exit {os.waitstatus_to_exitcode(status)}, expected {code}: {text.strip()[-600:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", nargs="*", help="run only the jobs whose name contains one of these words")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bitconvert-small-"))
    try:
        table = jobs(tmp)
        if args.only:
            table = {k: v for k, v in table.items() if any(w in k for w in args.only)}
        names = list(table)
        load_before = os.getloadavg()
        walls: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                wall, cpu = run_once(*table[name], name)
                walls[name].append(wall)
                cpus[name].append(cpu)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = {n: {"median_s": round(statistics.median(w), 3), "min_s": round(min(w), 3), "max_s": round(max(w), 3),
                "cpu_median_s": round(statistics.median(cpus[n]), 3), "exit": table[n][1]} for n, w in walls.items()}  # fmt: skip
    summary = {"rounds": args.rounds, "cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
               "load_after": [round(x, 2) for x in load_after], "jobs": rows}  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.rounds} alternated rounds; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"({os.cpu_count()} cores)")
    print(f"{'job':<44}{'median s':>10}{'min s':>8}{'max s':>8}{'CPU s':>8}  exit")
    for name, r in rows.items():
        print(f"{name:<44}{r['median_s']:>10.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}{r['cpu_median_s']:>8.3f}  {r['exit']}")


if __name__ == "__main__":
    main()
