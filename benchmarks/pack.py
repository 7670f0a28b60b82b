"""Benchmark: ``bitconvert pack`` of a full-size 2B-4T bf16 master vs plain copies of the same data.

    python benchmarks/pack.py [--dir bench-out/2b4t-bf16] [--layers 30] [--json]

Runs each job in its own process, in one run, and reports wall time and peak RSS (from wait4):
- bitconvert pack          master (4.8 GB) -> packed (1.18 GB), quantizing every linear weight
- copy (bytes)             the master file copied byte for byte with fsync: the I/O floor
- safetensors load+save    every tensor read with safetensors and written back with save_file
All outputs are fsynced. The input is read once beforehand so every job starts from a warm page cache.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.peakmem import BITCONVERT, run_measured  # noqa: E402
from benchmarks.synthetic import prepare, warm  # noqa: E402

COPY_BYTES = """
import os, shutil, sys
src, dst = sys.argv[1:3]
with open(src, 'rb') as a, open(dst, 'wb') as b:
    shutil.copyfileobj(a, b, 16 << 20)
    b.flush(); os.fsync(b.fileno())
"""
LOAD_SAVE = """
import os, sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:3]
save_file(load_file(src), dst, metadata={'format': 'pt'})
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def timed(code: str, *args: str) -> dict:
    r = run_measured(code, *map(str, args))
    if r.pop("returncode") != 0:
        raise SystemExit(f"job failed: {r['stderr'].strip()[-500:]}")
    r.pop("stderr")
    return r


def main() -> None:
    args, master, work = prepare(__doc__, "pack-bench")
    src_file = master / "model.safetensors"
    size = src_file.stat().st_size
    results = {}
    try:
        warm(src_file)
        results["bitconvert pack"] = timed(BITCONVERT, "pack", master, work / "packed")
        results["copy (bytes, fsync)"] = timed(COPY_BYTES, src_file, work / "copy.safetensors")
        results["safetensors load+save"] = timed(LOAD_SAVE, src_file, work / "ls.safetensors")
        packed_size = sum(p.stat().st_size for p in (work / "packed").glob("*.safetensors"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["bitconvert pack"]["wall_s"]
    for r in results.values():
        r["pack_speedup"] = round(r["wall_s"] / base, 2) if base else None
    summary = {"master_bytes": size, "packed_bytes": packed_size, "jobs": results}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"master {size:,} B -> packed {packed_size:,} B ({size / packed_size:.2f}x smaller)")
    print(f"{'job':<26}{'wall s':>9}{'peak RSS MB':>13}{'time / pack':>13}")
    for name, r in results.items():
        print(f"{name:<26}{r['wall_s']:>9.2f}{r['peak_rss_mb']:>13.1f}{r['pack_speedup']:>12.2f}x")


if __name__ == "__main__":
    main()
