"""Benchmark: every conversion and verification job against the copy floor, in ONE alternated run.

    python benchmarks/table.py [--dir bench-out/2b4t-bf16] [--layers 30] [--rounds 2] [--json]

Each job runs in its own process (whole-process wall time, peak RSS from the child's own VmHWM,
see peakmem.py). Rounds run every job once, in an order rotated by one each round, so load from
other processes on a shared machine spreads over all jobs alike; the table shows each job's
median wall time, its largest peak RSS and its ratio to the copy floor (or to the named peer).
The master is read once first so every job starts from a warm page cache; all outputs are fsynced.

- copy floor            every tensor read with safetensors and its bytes written to one file
- bitconvert pack       master -> hf-packed (and with --hash-sources: the provenance's sha256 too)
- transformers pack     fp32 absmean + transformers' pack_weights per weight, then save_file
- bitconvert gguf       ``convert --to gguf --gguf-type tq2_0``
- gguf-py TQ2_0         llama.cpp's fp32 fold + ``gguf.quants.quantize`` (see gguf_write.py)
- bitconvert verify     of the packed result (written once, before the rounds)
- inspect --json        of the packed result, and of the small shipped packed fixture
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gguf_write import GGUF_PY_TQ2_0  # noqa: E402
from benchmarks.peakmem import BITCONVERT, run_measured  # noqa: E402
from benchmarks.synthetic import prepare, warm  # noqa: E402

#: every job imports this checkout's bitconvert, whatever the working directory
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))

COPY_FLOOR = """
import os, sys
from safetensors import safe_open
src, dst = sys.argv[1:3]
with safe_open(src, 'pt') as st, open(dst, 'wb') as out:
    for name in st.keys():
        out.write(st.get_tensor(name).contiguous().view(-1).view(__import__('torch').uint8).numpy())
    out.flush(); os.fsync(out.fileno())
"""
TRANSFORMERS_PACK = """
import os, sys, torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.integrations.bitnet import pack_weights
src, dst = sys.argv[1:3]
LINEARS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
out = {}
with safe_open(src, 'pt') as st:
    for name in st.keys():
        w = st.get_tensor(name)
        if name.endswith(tuple(p + '.weight' for p in LINEARS)):
            wf = w.float()
            m = wf.abs().mean().clamp(min=1e-5)
            codes = (wf * (1.0 / m)).round().clamp(-1, 1).to(torch.int32)
            out[name] = pack_weights(codes)
            out[name[: -len('weight')] + 'weight_scale'] = m.reshape(1).to(torch.bfloat16)
        else:
            out[name] = w
save_file(out, dst, metadata={'format': 'pt'})
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def job_table(master: Path, work: Path, packed: Path) -> dict[str, tuple[str, list[str]]]:
    src = master / "model.safetensors"
    fixture = ROOT / "fixtures" / "bitnet-2b4t-packed"
    return {
        "copy floor (read + write every tensor)": (COPY_FLOOR, [str(src), str(work / "copy.bin")]),
        "bitconvert pack": (BITCONVERT, ["pack", str(master), str(work / "packed")]),
        "bitconvert pack --hash-sources": (BITCONVERT, ["pack", str(master), str(work / "packed"), "--hash-sources"]),
        "transformers-style pack": (TRANSFORMERS_PACK, [str(src), str(work / "tf.safetensors")]),
        "bitconvert convert --to gguf (TQ2_0)": (
            BITCONVERT, ["convert", str(master), str(work / "bc.gguf"), "--to", "gguf", "--gguf-type", "tq2_0"]),
        "gguf-py TQ2_0": (GGUF_PY_TQ2_0, [str(src), str(work / "gguf-py.gguf")]),
        "bitconvert verify (packed)": (BITCONVERT, ["verify", str(packed), "--json"]),
        "bitconvert inspect --json (packed)": (BITCONVERT, ["inspect", str(packed), "--json"]),
        "bitconvert inspect --json (fixture)": (BITCONVERT, ["inspect", str(fixture), "--json"]),
    }


#: ratio column: each job against the copy floor, and the two peers' rivals against the peer too
PEERS = {"bitconvert pack": "transformers-style pack", "bitconvert convert --to gguf (TQ2_0)": "gguf-py TQ2_0"}


def clean(work: Path) -> None:
    for p in work.iterdir():
        if p.name != "packed-ref":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_rounds(jobs: dict, work: Path, src: Path, rounds: int) -> dict[str, list[dict]]:
    names = list(jobs)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            clean(work)
            warm(src)
            code, args = jobs[name]
            res = run_measured(code, *args, env=ENV)
            if res["returncode"] not in (0,):
                raise SystemExit(f"{name} failed ({res['returncode']}): {res['stderr'].strip()[-800:]}")
            results[name].append(res)
    return results


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    table = {}
    for name, runs in results.items():
        table[name] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
            "walls": [r["wall_s"] for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
    floor = table["copy floor (read + write every tensor)"]["wall_s"]
    for name, row in table.items():
        row["vs_copy"] = round(row["wall_s"] / floor, 2)
        if name in PEERS:
            row["vs_peer"] = round(row["wall_s"] / table[PEERS[name]]["wall_s"], 2)
    return table


def main() -> None:
    args, master, work = prepare(__doc__, "table-bench", rounds=2)
    packed = work / "packed-ref"
    try:
        made = run_measured(BITCONVERT, "pack", str(master), str(packed), env=ENV)
        if made["returncode"]:
            raise SystemExit(f"pack failed: {made['stderr'][-800:]}")
        results = run_rounds(job_table(master, work, packed), work, master / "model.safetensors", args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = summarize(results)
    summary = {"layers": args.layers, "master_bytes": (master / "model.safetensors").stat().st_size,
               "rounds": args.rounds, "jobs": table}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"master: {args.layers} layers, {summary['master_bytes']:,} B bf16; {args.rounds} alternated rounds")
    print(f"{'job':<40}{'wall s (median)':>16}{'peak RSS MB':>13}{'x copy':>8}  vs peer")
    for name, r in table.items():
        peer = f"{r['vs_peer']:.2f}x {PEERS[name]}" if "vs_peer" in r else ""
        print(f"{name:<40}{r['wall_s']:>16.2f}{r['peak_rss_mb']:>13.1f}{r['vs_copy']:>8.2f}  {peer}")


if __name__ == "__main__":
    main()
