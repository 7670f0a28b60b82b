"""Benchmark: the big conversions at 2B and 8B against the floors and the peers, in ONE alternated run.

    python benchmarks/table.py [--sizes 2b 8b] [--rounds 2] [--dir bench-out] [--layers-8b N] [--keep] [--json]

Synthetic masters (benchmarks/synthetic.py: the 2B-4T shapes, 4.83 GB in one file; the same
architecture at Llama3-8B-1.58's widths, 15.0 GB in four shards; ``--layers-8b N`` keeps its widths
and vocabulary with fewer layers, where disk is short) are made once under ``--dir`` and kept
there; everything a run writes beside them is deleted at its end (``--keep`` keeps the reference
outputs: the packed model and the bf16 GGUF llama.cpp quantizes). Each job runs in its own process; rounds run every job of every size once, in an order rotated by one each round, so load
from other processes spreads over all jobs alike. Before each job its input is read once (warm
page cache); every output is fsynced. Per job: median wall time, median CPU time (user + system),
the largest peak RSS (the child's own VmHWM, see peakmem.py), and the load average at its start.

- read floor              ``cat`` the master's weight files to /dev/null
- copy floor              read every weight file and write its bytes to one file (16 MB at a time)
- bitconvert pack         master -> hf-packed
- ... empty compile cache the same, as the first run after installing: numba's cache folder empty
- bitconvert TQ2_0        ``convert --to gguf`` (TQ2_0, token_embd F16)
- bitconvert I2_S         ``convert --to gguf --gguf-type i2_s``
- gguf-py TQ2_0           llama.cpp's converter arithmetic and gguf-py's ``quants.quantize`` (gguf_write.py)
- llama.cpp TQ2_0 (C++)   ``llama_model_quantize`` (llama-cpp-python, 2 threads) of a bf16 GGUF that
                          bitconvert wrote before the rounds: the quantize call and the output's fsync
- bitconvert verify       of the packed model (written before the rounds)
- bitconvert inspect      ``inspect --json`` of the packed model

The targets it checks: pack <= 0.5x the copy and <= 5x the read floor; the first pack (empty
compile cache) <= 1.3x the others; TQ2_0 >= 6x faster than gguf-py and >= 4x faster than llama.cpp's
quantizer; peak RSS <= 1 GB, growing <= 10 % from 2B to 8B; 8B/2B time <= the byte ratio + 15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gguf_write import GGUF_PY_TQ2_0  # noqa: E402
from benchmarks.peakmem import BITCONVERT, run_measured  # noqa: E402
from benchmarks.synthetic import ensure_master, master_bytes, warm, weight_files  # noqa: E402

#: every job imports this checkout's bitconvert, whatever the working directory
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))

COPY_FLOOR = """
import os, sys
src, dst = sys.argv[1], sys.argv[2]
buf = bytearray(16 << 20)
view = memoryview(buf)
with open(dst, 'wb') as out:
    for path in sorted(p for p in os.listdir(src) if p.endswith('.safetensors')):
        with open(os.path.join(src, path), 'rb', buffering=0) as f:
            while n := f.readinto(buf):
                out.write(view[:n])
    out.flush(); os.fsync(out.fileno())
"""

LLAMA_CPP_QUANTIZE = """
import ctypes, json, os, sys, time
import llama_cpp as l
src, dst = sys.argv[1], sys.argv[2]
p = l.llama_model_quantize_default_params()
p.nthread = 2
p.ftype = l.LLAMA_FTYPE_MOSTLY_TQ2_0
start = time.perf_counter()
if l.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
    sys.exit('llama_model_quantize failed')
quantized = time.perf_counter()
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
print(json.dumps({'quantize_s': quantized - start, 'with_fsync_s': time.perf_counter() - start}), file=sys.stderr)
"""

COPY, READ, PACK, FIRST, TQ2, I2S, GGUF_PY, LLAMA_CPP, VERIFY, INSPECT = (
    "copy floor", "read floor (cat)", "bitconvert pack", "bitconvert pack, empty compile cache", "bitconvert TQ2_0",
    "bitconvert I2_S", "gguf-py TQ2_0", "llama.cpp TQ2_0 (C++)", "bitconvert verify", "bitconvert inspect --json",
)  # fmt: skip
#: the folder a FIRST job gets as numba's cache: created empty for each run (in the work folder)
EMPTY_CACHE = "numba-cache-empty"


def prepare_size(size: str, root: Path, layers: int | None = None) -> dict:
    """The master of ``size`` (made once, kept; ``layers``: fewer than the model's own), a work folder,
    and the inputs some jobs read: the packed model (verify, inspect) and the bf16 GGUF llama.cpp quantizes."""
    master = root / (f"{size}-bf16" + (f"-{layers}layers" if layers else ""))
    ensure_master(master, layers, size=size)
    work = root / f"table-{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    refs = {"packed": work / "ref-packed", "bf16": work / "ref-bf16.gguf"}
    for args in (["pack", master, refs["packed"]], ["convert", master, refs["bf16"], "--to", "gguf", "--gguf-type", "bf16"]):
        made = run_measured(BITCONVERT, *map(str, args), env=ENV)
        if made["returncode"]:
            raise SystemExit(f"{size}: {args[0]} failed: {made['stderr'][-800:]}")
    return {"master": master, "work": work, **refs}


def jobs(s: dict) -> dict[str, tuple[str | None, list[str], Path]]:
    """name -> (Python code or None for ``cat``, its arguments, the input to warm first)."""
    m, w = str(s["master"]), s["work"]
    return {
        READ: (None, [str(f) for f in weight_files(s["master"])], s["master"]),
        COPY: (COPY_FLOOR, [m, str(w / "copy.bin")], s["master"]),
        PACK: (BITCONVERT, ["pack", m, str(w / "packed")], s["master"]),
        FIRST: (BITCONVERT, ["pack", m, str(w / "packed")], s["master"]),
        TQ2: (BITCONVERT, ["convert", m, str(w / "tq2.gguf"), "--to", "gguf", "--gguf-type", "tq2_0"], s["master"]),
        I2S: (BITCONVERT, ["convert", m, str(w / "i2s.gguf"), "--to", "gguf", "--gguf-type", "i2_s"], s["master"]),
        GGUF_PY: (GGUF_PY_TQ2_0, [m, str(w / "gguf-py.gguf")], s["master"]),
        LLAMA_CPP: (LLAMA_CPP_QUANTIZE, [str(s["bf16"]), str(w / "llama-cpp.gguf")], s["bf16"]),
        VERIFY: (BITCONVERT, ["verify", str(s["packed"]), "--json"], s["packed"]),
        INSPECT: (BITCONVERT, ["inspect", str(s["packed"]), "--json"], s["packed"]),
    }


def run_job(code: str | None, args: list[str], env: dict = ENV) -> dict:
    if code is None:  # the read floor: cat, no Python
        start = time.perf_counter()
        proc = subprocess.Popen(["cat", *args], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        return {"wall_s": round(time.perf_counter() - start, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                "peak_rss_mb": None, "returncode": os.waitstatus_to_exitcode(status), "stderr": ""}  # fmt: skip
    res = run_measured(code, *args, env=env)
    if code is LLAMA_CPP_QUANTIZE and res["returncode"] == 0:  # the quantize step alone, as it reports it
        step = json.loads(res["stderr"].strip().splitlines()[-1])
        res["process_wall_s"], res["wall_s"] = res["wall_s"], round(step["with_fsync_s"], 2)
        res["quantize_call_s"] = round(step["quantize_s"], 2)
    return res


def clean(work: Path) -> None:
    for p in work.iterdir():
        if not p.name.startswith("ref-"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_rounds(table: dict[str, tuple], works: list[Path], rounds: int) -> dict[str, list[dict]]:
    names = list(table)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for w in works:
                clean(w)
            code, args, source = table[name]
            env = ENV
            if name.endswith(FIRST):  # as just installed: numba compiles the loops the job runs
                cache = Path(args[-1]).parent / EMPTY_CACHE
                cache.mkdir()
                env = dict(ENV, NUMBA_CACHE_DIR=str(cache))
            warm(source)
            load = os.getloadavg()[0]
            res = run_job(code, args, env)
            if res["returncode"] != 0:
                raise SystemExit(f"{name} failed ({res['returncode']}): {res['stderr'].strip()[-800:]}")
            res["load"] = round(load, 2)
            results[name].append(res)
            print(f"  round {r + 1}: {name}: {res['wall_s']:.2f} s (load {load:.1f})", file=sys.stderr, flush=True)
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for name, runs in results.items():
        rss = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
        out[name] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "walls": [r["wall_s"] for r in runs],
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
            "peak_rss_mb": max(rss) if rss else None,
            "loads": [r["load"] for r in runs],
        }
    return out


def targets(rows: dict[str, dict], sizes: dict[str, dict]) -> list[tuple[str, float, str, bool]]:
    """(what, figure, limit, met) for every target the issue sets."""
    found = []
    for size in sizes:
        row = {job: rows[f"{size} {job}"] for job in (READ, COPY, PACK, TQ2, GGUF_PY, LLAMA_CPP)}
        pack, tq2, first = row[PACK]["wall_s"], row[TQ2]["wall_s"], rows[f"{size} {FIRST}"]["wall_s"]
        found += [
            (f"{size} pack / copy", pack / row[COPY]["wall_s"], "<= 0.5", pack / row[COPY]["wall_s"] <= 0.5),
            (f"{size} pack / read floor", pack / row[READ]["wall_s"], "<= 5", pack / row[READ]["wall_s"] <= 5),
            (f"{size} first pack / pack", first / pack, "<= 1.3", first / pack <= 1.3),
            (f"{size} gguf-py / TQ2_0", row[GGUF_PY]["wall_s"] / tq2, ">= 6", row[GGUF_PY]["wall_s"] / tq2 >= 6),
            (f"{size} llama.cpp / TQ2_0", row[LLAMA_CPP]["wall_s"] / tq2, ">= 4", row[LLAMA_CPP]["wall_s"] / tq2 >= 4),
        ]
        for job in (PACK, TQ2, I2S, VERIFY, INSPECT):
            mb = rows[f"{size} {job}"]["peak_rss_mb"]
            found.append((f"{size} {job} peak RSS MB", mb, "<= 1000", mb <= 1000))
    if {"2b", "8b"} <= set(sizes):
        limit = sizes["8b"]["bytes"] / sizes["2b"]["bytes"] * 1.15
        for job in (PACK, TQ2, I2S, VERIFY, INSPECT):
            ratio = rows[f"8b {job}"]["wall_s"] / rows[f"2b {job}"]["wall_s"]
            found.append((f"8b/2b time, {job}", ratio, f"<= {limit:.2f}", ratio <= limit))
            grow = rows[f"8b {job}"]["peak_rss_mb"] / rows[f"2b {job}"]["peak_rss_mb"]
            found.append((f"8b/2b peak RSS, {job}", grow, "<= 1.10", grow <= 1.10))
    return [(what, round(v, 2), limit, met) for what, v, limit, met in found]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", choices=("2b", "8b"), default=["2b", "8b"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--layers-8b", type=int, default=None, help="8b: this many layers (default: its 32)")
    ap.add_argument("--keep", action="store_true", help="keep the reference outputs (packed, bf16 GGUF)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    prepared = {size: prepare_size(size, args.dir, args.layers_8b if size == "8b" else None) for size in args.sizes}
    table = {f"{size} {name}": job for size, s in prepared.items() for name, job in jobs(s).items()}
    load_before = os.getloadavg()
    try:
        results = run_rounds(table, [s["work"] for s in prepared.values()], args.rounds)
    finally:
        for s in prepared.values():
            clean(s["work"]) if args.keep else shutil.rmtree(s["work"], ignore_errors=True)
    rows = summarize(results)
    sizes = {size: {"bytes": master_bytes(s["master"]), "files": len(weight_files(s["master"]))} for size, s in prepared.items()}
    summary = {"rounds": args.rounds, "sizes": sizes, "load_before": [round(x, 2) for x in load_before],
               "load_after": [round(x, 2) for x in os.getloadavg()], "jobs": rows,
               "targets": [{"what": w, "figure": v, "limit": lim, "met": met} for w, v, lim, met in targets(rows, sizes)]}  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{args.rounds} alternated rounds; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    for size, info in sizes.items():
        print(f"{size}: {info['bytes']:,} B bf16 in {info['files']} file(s)")
    print(f"{'job':<34}{'wall s (median)':>16}{'CPU s':>8}{'peak RSS MB':>13}  walls")
    for name, r in rows.items():
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-"
        print(f"{name:<34}{r['wall_s']:>16.2f}{r['cpu_s']:>8.2f}{rss:>13}  {r['walls']}")
    print("targets:")
    for what, value, limit, met in targets(rows, sizes):
        print(f"  {'met ' if met else 'MISS'} {what}: {value} ({limit})")


if __name__ == "__main__":
    main()
