"""Benchmark: GGUF TQ2_0 write of a 2B-4T-shaped bf16 master, bitconvert vs gguf-py, in one run.

    python benchmarks/gguf_write.py [--dir bench-out/gguf-2b4t-bf16] [--layers 30] [--json]

Each job runs in its own process; wall time, CPU time (user + system) and peak RSS come from
wait4 (CPU time is the steadier figure on a shared machine). Both start from the
same master (read once beforehand, so the page cache is warm), write the same tensors in the same
order (token_embd F16, norms F32, linear weights TQ2_0), stream tensor by tensor, and fsync:
- bitconvert            ``bitconvert convert MASTER OUT.gguf --to gguf --gguf-type tq2_0``
- gguf-py (numpy)       what llama.cpp's converter does for this model: each linear weight
                        quantized to codes x scale in torch (``weight_quant``), then gguf-py's
                        numpy ``quants.quantize(TQ2_0)``, written with ``GGUFWriter`` tensor by tensor
Afterwards the ternary codes of the two files are compared tensor by tensor (they must be equal;
the files differ by design in where the scale lives: d = 1 + .scale tensor vs per-block d).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.synthetic import prepare, warm  # noqa: E402

GGUF_PY_TQ2_0 = r"""
import os, sys
import numpy as np, torch, gguf
from safetensors import safe_open
src, dst = sys.argv[1:3]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}
def gname(n):
    if n == "model.embed_tokens.weight": return "token_embd.weight"
    if n == "model.norm.weight": return "output_norm.weight"
    layer, rest = n.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{NAMES[rest.removesuffix('.weight')]}.weight"
def order(n):  # the same order bitconvert writes: embedding, layers by number, final norm
    if n.startswith("model.layers."):
        return (1, int(n.split(".")[2]), n)
    return (0 if "embed" in n else 2, 0, n)
def weight_quant(w):  # llama.cpp's BitnetModel.weight_quant
    w = w.float()
    s = 1 / w.abs().mean().clamp(min=1e-5)
    return (w * s).round().clamp(-1, 1) / s
# SRC: one safetensors file, or a master's folder (every shard)
files = [src] if os.path.isfile(src) else sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".safetensors"))
where = {}
for f in files:
    h = safe_open(f, "pt")
    where.update((n, h) for n in h.keys())
names = sorted(where, key=order)
w = gguf.GGUFWriter(dst, "bitnet")
plan = []
for n in names:
    shape = tuple(where[n].get_slice(n).get_shape())
    if n.endswith(tuple(p + ".weight" for p in LINEARS)):
        q = gguf.GGMLQuantizationType.TQ2_0
    elif n == "model.embed_tokens.weight":
        q = gguf.GGMLQuantizationType.F16
    else:
        q = gguf.GGMLQuantizationType.F32
    bsize, tsize = gguf.GGML_QUANT_SIZES[q]
    nbytes = int(np.prod(shape)) // bsize * tsize
    # shape given in values (not bytes) for the TQ2_0 tensors, hence a non-uint8 dtype
    dtype = np.float16 if q == gguf.GGMLQuantizationType.F16 else np.float32
    raw = q if q == gguf.GGMLQuantizationType.TQ2_0 else None
    w.add_tensor_info(gname(n), shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    plan.append((n, q))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_ti_data_to_file()
for n, q in plan:
    t = where[n].get_tensor(n)
    if q == gguf.GGMLQuantizationType.TQ2_0:
        data = gguf.quants.quantize(weight_quant(t).numpy(), q)
    elif q == gguf.GGMLQuantizationType.F16:
        data = t.to(torch.float16).numpy()
    else:
        data = t.to(torch.float32).numpy()
    w.write_tensor_data(data)
w.close()
fd = os.open(dst, os.O_RDONLY); os.fsync(fd); os.close(fd)
"""

COMPARE_CODES = r"""
import sys
import numpy as np
from bitconvert.formats.gguf.parser import GGUFFile
from bitconvert.formats.gguf import codecs, types
a, b = GGUFFile(sys.argv[1]), GGUFFile(sys.argv[2])
n = 0
for name, t in a.tensors.items():
    if t.type != types.TQ2_0:
        continue
    u = b.tensors[name]
    assert u.type == types.TQ2_0 and u.shape == t.shape, name
    rows, cols = t.shape
    ca, da = codecs.decode_tq2_0(a.read_bytes(name).reshape(rows, -1), cols)
    cb, db = codecs.decode_tq2_0(b.read_bytes(name).reshape(rows, -1), cols)
    assert np.array_equal(ca, cb), f"codes differ in {name}"
    n += 1
print(n)
"""


def timed(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({code}): {err.strip()[-800:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    args, master, work = prepare(__doc__, "gguf-bench")
    src_file = master / "model.safetensors"
    py = sys.executable
    ours, theirs = work / "bitconvert-tq2_0.gguf", work / "gguf-py-tq2_0.gguf"
    results = {}
    try:
        warm(src_file)
        results["bitconvert"] = timed(
            [py, "-m", "bitconvert", "convert", str(master), str(ours), "--to", "gguf", "--gguf-type", "tq2_0"]
        )
        warm(src_file)
        results["gguf-py (numpy)"] = timed([py, "-c", GGUF_PY_TQ2_0, str(src_file), str(theirs)])
        sizes = {"bitconvert": ours.stat().st_size, "gguf-py (numpy)": theirs.stat().st_size}
        check = subprocess.run([py, "-c", COMPARE_CODES, str(ours), str(theirs)], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"the two files disagree: {check.stderr.strip()[-800:]}")
        tensors_compared = int(check.stdout.strip())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["bitconvert"]["wall_s"]
    for name, r in results.items():
        r["bytes"] = sizes[name]
        r["time_vs_bitconvert"] = round(r["wall_s"] / base, 2) if base else None
    summary = {
        "layers": args.layers,
        "master_bytes": src_file.stat().st_size,
        "tq2_0_tensors_with_equal_codes": tensors_compared,
        "jobs": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"master: {args.layers} layers, {summary['master_bytes']:,} B bf16; "
          f"ternary codes equal in both outputs for {tensors_compared} TQ2_0 tensors")
    print(f"{'job':<18}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'output B':>16}{'wall / bitconvert':>19}")
    for name, r in results.items():
        row = f"{name:<18}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}{r['peak_rss_mb']:>13.1f}{r['bytes']:>16,}"
        print(f"{row}{r['time_vs_bitconvert']:>18.2f}x")


if __name__ == "__main__":
    main()
