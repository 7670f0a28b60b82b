"""Speed and memory of the reference runtime against transformers' BitNet model, in one run.

    python benchmarks/runtime.py                      # CPU: 2B-4T layer shapes, 4 layers, full vocab
    python benchmarks/runtime.py --layers 2 --vocab 32000 --prompt 64 --decode 16 --json
    python benchmarks/runtime.py --device cuda --json out.json   # GPU: the full 2B-4T depth

A synthetic checkpoint with microsoft/bitnet-b1.58-2B-4T's shapes (hidden 2560, intermediate
6912, 20 heads, 5 KV heads, vocab 128256, tied embedding) but only ``--layers`` layers is
generated (seeded random latent weights), then packed by bitconvert into transformers' offline
layout (autobitlinear, bf16), as the real checkpoint ships. Each engine then runs in its own
process, so that its peak memory is its own:

* ``transformers``: ``AutoModelForCausalLM.from_pretrained(dtype=bfloat16)`` (offline
  AutoBitLinear: bf16 unpacked weights), KV cache (DynamicCache), ``logits_to_keep=1``; on CUDA
  loaded with ``device_map="cuda"`` (transformers' BitNet loader needs ``accelerate``);
* ``bitconvert-bf16``: the reference runtime with bf16 activations and dense weights (the same
  dtype as transformers: the apples-to-apples column); on CUDA its ternary layers run the Triton
  kernels (``load_model`` picks them when Triton imports), which the ``kernel_linears`` row shows;
* ``bitconvert-f32``: the runtime in its default fp32 (the numerics used for comparisons; CPU
  default only);
* ``bitconvert-bf16-torch`` (only when asked for): bf16 with the Triton kernels turned off, i.e.
  int8 codes and torch matmuls; on CUDA it shows what the kernels bring.

Prefill: one forward pass over ``--prompt`` tokens (logits of the last position only), best and
median of ``--repeats``. Decode: ``--decode`` greedy steps with the KV cache after a prefill,
best and median of ``--repeats``. Every engine warms up first with two full decode runs of the
same shapes (transformers compiles its quantizers, Triton its kernels). On CUDA timed regions are
bracketed by ``torch.cuda.synchronize()`` and memory is ``torch.cuda.max_memory_allocated``; on
the CPU it is the peak resident set (VmHWM).

Reported besides the table: the decode (and prefill) tokens/s ratio of each runtime column to
transformers (the GPU target is decode >= 3x), the greedy-token agreement with transformers over
the measured decode run (leading tokens equal), and the top-1 / max |diff| of the prefill logits.
With random weights, greedy tokens are a weak check (they tend to repeat), the logits a better one.

Exit status: 0 when every engine ran, 1 when one failed or timed out (the others are still
reported; with ``--json PATH`` the file is rewritten after each engine), 2 for ``--device cuda``
without a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES_2B4T = {"hidden": 2560, "intermediate": 6912, "heads": 20, "kv_heads": 5, "vocab": 128256, "layers": 30}
ENGINES = ("transformers", "bitconvert-bf16", "bitconvert-f32")
#: also selectable: the runtime in bf16 with the Triton kernels turned off (int8 codes + torch matmuls)
ALL_ENGINES = (*ENGINES, "bitconvert-bf16-torch")
#: per device: layers, decode steps, engines (what an argument left out means)
DEFAULTS = {
    "cpu": {"layers": 4, "decode": 32, "engines": ENGINES},
    # the runtime first: it loads in seconds; transformers (compiles on first use) gets what --budget leaves
    "cuda": {"layers": SHAPES_2B4T["layers"], "decode": 128, "engines": ("bitconvert-bf16", "transformers")},
}
#: the GPU goal: end-to-end decode with the runtime at least this many times transformers' speed
TARGET_DECODE_RATIO = 3.0
BASELINE = "transformers"


# --- the synthetic checkpoint ---------------------------------------------------------------------


def make_model(out: Path, layers: int, vocab: int, seed: int = 0) -> Path:
    """A bf16 master with 2B-4T shapes written tensor by tensor, then packed by bitconvert."""
    import torch

    from bitconvert.convert import convert
    from bitconvert.dtypes import Dense
    from bitconvert.io.safetensors import PlannedTensor, SafetensorsWriter
    from bitconvert.ternary import LinearClass

    s = dict(SHAPES_2B4T, vocab=vocab)
    h, i, d = s["hidden"], s["intermediate"], s["hidden"] // s["heads"]
    kv = s["kv_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "self_attn.attn_sub_norm.weight": (h,), p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i), p + "mlp.ffn_sub_norm.weight": (i,),
        })
    shapes["model.norm.weight"] = (h,)
    master = out / "master"
    master.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    plan = [PlannedTensor(name, "BF16", shape) for name, shape in shapes.items()]
    with SafetensorsWriter(master / "model.safetensors", plan, {"format": "pt"}) as w:
        for t in plan:
            if len(t.shape) == 1:
                value = 1 + 0.1 * torch.randn(t.shape, generator=g)
            elif t.name == "model.embed_tokens.weight":
                value = torch.randn(t.shape, generator=g)
            else:
                value = 0.02 * torch.randn(t.shape, generator=g)
            w.write(t.name, Dense.from_torch(value.to(torch.bfloat16)))
    config = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"], "vocab_size": vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 0,
        "eos_token_id": 1, "torch_dtype": "bfloat16", "attention_bias": False, "attention_dropout": 0.0,
        "quantization_config": {
            "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"
        },
    }
    (master / "config.json").write_text(json.dumps(config, indent=2))
    packed = out / "packed"
    convert(master, packed, "hf-packed", {"linear_class": LinearClass.AUTOBITLINEAR})
    return packed


# --- one engine, in its own process ---------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over from the fork.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TransformersEngine:
    def __init__(self, path: Path, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = device
        kwargs = {"device_map": device} if device != "cpu" else {}
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **kwargs)
        self.model.eval()

    def describe(self) -> dict:
        from collections import Counter

        counts = Counter(type(m).__name__ for m in self.model.modules() if "Linear" in type(m).__name__)
        devices = sorted({str(p.device) for p in self.model.parameters()})
        return {"linear_modules": dict(counts), "kernel_linears": "n/a", "weights_on": devices}

    def prefill(self, ids: list[int]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            x = self.torch.tensor([ids], device=self.device)
            out = self.model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], cache

    def step(self, token: int, cache):
        with self.torch.inference_mode():
            x = self.torch.tensor([[token]], device=self.device)
            out = self.model(x, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


class RuntimeEngine:
    def __init__(self, path: Path, dtype_name: str, device: str, use_kernels: bool | None = None) -> None:
        import torch

        from bitconvert.runtime import load_model

        self.model = load_model(path, device=device, dtype=getattr(torch, dtype_name), use_kernels=use_kernels)

    def describe(self) -> dict:
        from bitconvert.kernels import uses_triton
        from bitconvert.runtime.linear import TernaryLinear

        m = self.model
        lins = [lin for la in m.layers for lin in (la.q, la.k, la.v, la.o, la.gate, la.up, la.down)]
        kernel = sum(isinstance(lin, TernaryLinear) and lin.packed is not None for lin in lins)
        return {
            "linear_modules": {"TernaryLinear": sum(isinstance(lin, TernaryLinear) for lin in lins),
                               "DenseLinear": sum(not isinstance(lin, TernaryLinear) for lin in lins)},
            # packed 2-bit weights served by bitconvert.kernels.ternary_linear (Triton), else int8 codes + torch
            "kernel_linears": f"{kernel}/{len(lins)}",
            "triton_for_device": uses_triton(m.device),
            "weights_on": [str(m.device)],
            "weight_mib": round(m.weight_bytes() / 2**20, 1),
        }

    def prefill(self, ids: list[int]):
        cache = self.model.new_cache(capacity=4096)
        return self.model.forward(ids, cache, last_only=True)[0], cache

    def step(self, token: int, cache):
        return self.model.forward([token], cache, last_only=True)[0]


def _versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "triton", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_engine(
    engine: str,
    path: Path,
    prompt_len: int,
    decode: int,
    repeats: int,
    threads: int | None,
    device: str = "cpu",
    logits_out: Path | None = None,
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = device == "cuda"
    if engine == "transformers":
        import transformers  # noqa: F401  (imports count as baseline, not as the model's memory)
    else:
        import bitconvert.runtime  # noqa: F401

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss_bytes()
    start = time.perf_counter()
    if engine == "transformers":
        eng = TransformersEngine(path, device)
    else:
        dtype_name = "float32" if engine == "bitconvert-f32" else "bfloat16"
        eng = RuntimeEngine(path, dtype_name, device, use_kernels=False if engine.endswith("-torch") else None)
    sync()
    load_s = time.perf_counter() - start
    after_load = _rss_bytes()
    gpu_after_load = torch.cuda.memory_allocated() if cuda else 0
    g = torch.Generator().manual_seed(1)
    vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
    ids = torch.randint(2, min(1000, vocab), (prompt_len,), generator=g).tolist()

    def decode_run() -> tuple[float, list[int]]:
        logits, cache = eng.prefill(ids)
        tokens = [int(logits.argmax())]
        sync()
        t0 = time.perf_counter()
        for _ in range(decode):
            logits = eng.step(tokens[-1], cache)
            tokens.append(int(logits.argmax()))  # the host needs the token: one sync per step, both engines
        sync()
        return time.perf_counter() - t0, tokens

    warm_start = time.perf_counter()
    decode_run()  # warm-up: same shapes as measured (transformers compiles its quantizers here, Triton its kernels)
    decode_run()
    warmup_s = time.perf_counter() - warm_start
    prefill_times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        logits, _ = eng.prefill(ids)
        sync()
        prefill_times.append(time.perf_counter() - t0)
    if logits_out is not None:
        torch.save(logits.detach().float().cpu(), logits_out)
    decode_times = []
    tokens: list[int] = []
    for _ in range(repeats):
        seconds, tokens = decode_run()
        decode_times.append(seconds)
    result = {
        "engine": engine,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        **eng.describe(),
        "load_seconds": round(load_s, 2),
        "warmup_seconds": round(warmup_s, 2),
        "prefill_tokens": prompt_len,
        "prefill_tok_s_best": round(prompt_len / min(prefill_times), 2),
        "prefill_tok_s_median": round(prompt_len / statistics.median(prefill_times), 2),
        "decode_tokens": decode,
        "decode_tok_s_best": round(decode / min(decode_times), 2),
        "decode_tok_s_median": round(decode / statistics.median(decode_times), 2),
        "decode_ms_per_token_median": round(1000 * statistics.median(decode_times) / decode, 3),
        "rss_after_imports_mib": round(baseline / 2**20, 1),
        "rss_after_load_mib": round(after_load / 2**20, 1),
        "peak_rss_mib": round(_peak_rss_bytes() / 2**20, 1),
        "peak_above_imports_mib": round((_peak_rss_bytes() - baseline) / 2**20, 1),
        "greedy_tokens": tokens,  # the prefill's token, then one per decode step
    }
    if cuda:
        result.update({
            "gpu_after_load_mib": round(gpu_after_load / 2**20, 1),
            "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "gpu_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        })
    return result


# --- driver -------------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def compare(results: list[dict], logits: dict[str, Path]) -> dict:
    """Per engine against the baseline (transformers, else the first engine that ran): speed ratios,
    greedy agreement, prefill logits."""
    ran = [r for r in results if "error" not in r]
    base = next((r for r in ran if r["engine"] == BASELINE), ran[0] if ran else None)
    out: dict[str, dict] = {}
    if base is None:
        return out
    base_logits = None
    if base["engine"] in logits and logits[base["engine"]].exists():
        import torch

        base_logits = torch.load(logits[base["engine"]])
    for r in ran:
        if r is base:
            continue
        a, b = r["greedy_tokens"], base["greedy_tokens"]
        agree = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        c = {
            "against": base["engine"],
            "decode_ratio_median": _ratio(r["decode_tok_s_median"], base["decode_tok_s_median"]),
            "decode_ratio_best": _ratio(r["decode_tok_s_best"], base["decode_tok_s_best"]),
            "prefill_ratio_median": _ratio(r["prefill_tok_s_median"], base["prefill_tok_s_median"]),
            "greedy_leading_equal": agree,
            "greedy_compared": min(len(a), len(b)),
            "greedy_all_equal": a == b,
        }
        if base_logits is not None and r["engine"] in logits and logits[r["engine"]].exists():
            import torch

            mine = torch.load(logits[r["engine"]])
            c["prefill_top1_equal"] = int(mine.argmax()) == int(base_logits.argmax())
            c["prefill_logits_max_abs_diff"] = round(float((mine - base_logits).abs().max()), 4)
            c["prefill_logits_max_abs"] = round(float(base_logits.abs().max()), 4)
        out[r["engine"]] = c
    return out


def _judge(summary: dict) -> None:
    """On CUDA, whether each runtime column meets the decode target against transformers."""
    for c in summary["comparison"].values():
        ratio = c["decode_ratio_median"]
        ok = summary["device"] == "cuda" and c["against"] == BASELINE and ratio is not None
        c["target_met"] = ratio >= TARGET_DECODE_RATIO if ok else None


def _write_json(summary: dict, target: str | None) -> None:
    if target and target != "-":
        tmp = Path(target + ".partial")
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(target)


def _print_table(summary: dict, args: argparse.Namespace) -> None:
    results = [r for r in summary["results"] if "error" not in r]
    m = summary["model"]
    print(
        f"model: {m['layers']} layers of 2B-4T shape (hidden {m['hidden']}, intermediate {m['intermediate']}, "
        f"heads {m['heads']}/{m['kv_heads']}), vocab {m['vocab']}; device {summary['device']}; prefill {args.prompt} "
        f"tokens, decode {args.decode}; load average {summary['load_average_before_after']}"
    )
    if results:
        keys = ["device", "kernel_linears", "load_seconds", "warmup_seconds", "prefill_tok_s_best",
                "prefill_tok_s_median", "decode_tok_s_best", "decode_tok_s_median", "decode_ms_per_token_median"]
        if args.device == "cuda":
            keys += ["gpu_after_load_mib", "gpu_peak_allocated_mib", "gpu_peak_reserved_mib", "peak_rss_mib"]
        else:
            keys = [k for k in keys if k != "device"] + ["threads", "rss_after_load_mib", "peak_rss_mib",
                                                          "peak_above_imports_mib"]
        width = max(len(k) for k in keys + ["greedy_tokens[:8]"])
        print(" " * width + "".join(f"{r['engine']:>28}" for r in results))
        for k in keys:
            print(f"{k:<{width}}" + "".join(f"{str(r.get(k))[:27]:>28}" for r in results))
        print(f"{'greedy_tokens[:8]':<{width}}" + "".join(f"{str(r['greedy_tokens'][:8])[:27]:>28}" for r in results))
    for engine, c in summary["comparison"].items():
        ratio = c["decode_ratio_median"]
        verdict = "" if c.get("target_met") is None else (
            f" (target >= {TARGET_DECODE_RATIO:g}x: {'met' if c['target_met'] else 'NOT met'})")
        print(f"decode tok/s {engine} / {c['against']}: median {ratio}x, best {c['decode_ratio_best']}x{verdict}; "
              f"prefill median {c['prefill_ratio_median']}x")
        logits = ""
        if "prefill_top1_equal" in c:
            logits = (f"; prefill logits top-1 {'equal' if c['prefill_top1_equal'] else 'DIFFERENT'}, "
                      f"max |diff| {c['prefill_logits_max_abs_diff']} (max |logit| {c['prefill_logits_max_abs']})")
        print(f"  greedy tokens {engine} vs {c['against']}: first {c['greedy_leading_equal']} of "
              f"{c['greedy_compared']} equal{logits}")
    for r in summary["results"]:
        if "error" in r:
            print(f"{r['engine']} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else '?'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--layers", type=int, help="decoder layers (default: 4 on cpu, 30 = 2B-4T on cuda)")
    ap.add_argument("--vocab", type=int, default=SHAPES_2B4T["vocab"])
    ap.add_argument("--prompt", type=int, default=128, help="prefill length in tokens")
    ap.add_argument("--decode", type=int, help="decode steps (default: 32 on cpu, 128 on cuda)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", help="comma-separated (default: all three on cpu; bitconvert-bf16,transformers on cuda)")
    ap.add_argument("--threads", type=int, help="torch threads per engine (default: torch's choice)")
    ap.add_argument("--model", type=Path, help="reuse a packed checkpoint instead of generating one")
    ap.add_argument("--generate-only", type=Path, metavar="DIR",
                    help="only write the packed checkpoint to DIR/packed (for a later --model DIR/packed) and exit")
    ap.add_argument("--child-timeout", type=float, help="seconds per engine process; a slower one is reported failed")
    ap.add_argument("--budget", type=float, metavar="SECONDS",
                    help="for the whole run: each engine gets at most what is left (minus 5 s to report); "
                         "an engine that cannot start in time is reported failed")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="print JSON instead of the table; with PATH, print the table and write the JSON there")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    defaults = DEFAULTS[args.device]
    args.layers = args.layers if args.layers is not None else defaults["layers"]
    args.decode = args.decode if args.decode is not None else defaults["decode"]
    if args.child:
        print(json.dumps(run_engine(args.child, args.model, args.prompt, args.decode, args.repeats, args.threads,
                                    args.device, args.logits_out)))
        return
    if args.generate_only:
        import shutil

        t0 = time.perf_counter()
        args.generate_only.mkdir(parents=True, exist_ok=True)
        for stale in ("master", "packed"):
            shutil.rmtree(args.generate_only / stale, ignore_errors=True)
        packed = make_model(args.generate_only, args.layers, args.vocab)
        shutil.rmtree(args.generate_only / "master", ignore_errors=True)
        print(f"{packed}: {args.layers} layers, vocab {args.vocab}, {time.perf_counter() - t0:.1f} s")
        return
    engines = args.engines.split(",") if args.engines else list(defaults["engines"])
    unknown = [e for e in engines if e not in ALL_ENGINES]
    if unknown:
        ap.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ALL_ENGINES)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print(f"benchmarks/runtime.py: --device cuda: no CUDA device is available (torch {torch.__version__}, "
                  f"CUDA build {torch.version.cuda or 'none'})", file=sys.stderr)
            raise SystemExit(2)

    deadline = time.monotonic() + args.budget - 5 if args.budget else None
    failed = False
    with tempfile.TemporaryDirectory(prefix="bitconvert-bench-") as tmp:
        t0 = time.perf_counter()
        path = args.model or make_model(Path(tmp), args.layers, args.vocab)
        gen_s = time.perf_counter() - t0
        if args.model:  # describe what was given, not the defaults
            cfg = json.loads((args.model / "config.json").read_text())
            args.layers, args.vocab = cfg.get("num_hidden_layers", args.layers), cfg.get("vocab_size", args.vocab)
        results: list[dict] = []
        logits: dict[str, Path] = {}
        summary = {
            "model": {
                **SHAPES_2B4T, "layers": args.layers, "vocab": args.vocab, "format": "hf-packed autobitlinear bf16",
                "path": str(args.model) if args.model else "generated",
            },
            "device": args.device,
            "prompt_tokens": args.prompt,
            "decode_tokens": args.decode,
            "repeats": args.repeats,
            "target_decode_ratio": TARGET_DECODE_RATIO if args.device == "cuda" else None,
            "versions": _versions(),
            "generate_seconds": round(gen_s, 1),
            "cpu_count": os.cpu_count(),
            "load_average_before_after": [round(os.getloadavg()[0], 2), None],
            "complete": False,
            "results": results,
            "comparison": {},
        }
        for engine in engines:
            logits[engine] = Path(tmp) / f"logits-{engine}.pt"
            cmd = [sys.executable, __file__, "--child", engine, "--model", str(path), "--prompt", str(args.prompt),
                   "--decode", str(args.decode), "--repeats", str(args.repeats), "--device", args.device,
                   "--logits-out", str(logits[engine])]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            started = time.perf_counter()
            timeout = args.child_timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                timeout = left if timeout is None else min(timeout, left)
            try:
                if timeout is not None and timeout < 5:
                    r, error = None, f"not started: {max(timeout, 0):.0f} s left of --budget"
                else:
                    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False)
                    error = None if r.returncode == 0 else f"exit {r.returncode}:\n{r.stderr[-3000:]}"
            except subprocess.TimeoutExpired as exc:
                r, error = None, f"timed out after {exc.timeout:.0f} s (--child-timeout / --budget)"
            if error is None:
                results.append(json.loads(r.stdout.strip().splitlines()[-1]))
            else:
                failed = True
                results.append({"engine": engine, "error": error, "seconds": round(time.perf_counter() - started, 1)})
                print(f"{engine} failed: {error.strip()[-3000:]}", file=sys.stderr)
            summary["comparison"] = compare(results, logits)
            _judge(summary)
            _write_json(summary, args.json)
        summary["load_average_before_after"][1] = round(os.getloadavg()[0], 2)
        summary["complete"] = not failed
        _write_json(summary, args.json)
    if args.json == "-":
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary, args)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
