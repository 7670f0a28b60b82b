"""CPU speed and memory of the reference runtime, side by side with transformers, in one run.

    python benchmarks/runtime.py                      # 2B-4T layer shapes, 4 layers, full vocab
    python benchmarks/runtime.py --layers 2 --vocab 32000 --prompt 64 --decode 16 --json

A synthetic checkpoint with microsoft/bitnet-b1.58-2B-4T's shapes (hidden 2560, intermediate
6912, 20 heads, 5 KV heads, vocab 128256, tied embedding) but only ``--layers`` layers is
generated (seeded random latent weights), then packed by bitconvert into transformers' offline
layout (autobitlinear, bf16), as the real checkpoint ships. Each engine then runs in its own
process, so that its peak memory (VmHWM, the peak resident set) is its own:

* ``transformers``: ``AutoModelForCausalLM.from_pretrained(dtype=bfloat16)`` (offline
  AutoBitLinear: bf16 unpacked weights), KV cache (DynamicCache), ``logits_to_keep=1``;
* ``bitconvert-bf16``: the reference runtime with bf16 activations and dense weights (the same
  dtype as transformers: the apples-to-apples column);
* ``bitconvert-f32``: the runtime in its default fp32 (the numerics used for comparisons).

Prefill: one forward pass over ``--prompt`` tokens (logits of the last position only), best and
median of ``--repeats``. Decode: ``--decode`` greedy steps with the KV cache after a prefill.
Every engine warms up first with the same shapes (transformers compiles its quantizers).
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

SHAPES_2B4T = dict(hidden=2560, intermediate=6912, heads=20, kv_heads=5, vocab=128256)
ENGINES = ("transformers", "bitconvert-bf16", "bitconvert-f32")


# --- the synthetic checkpoint ---------------------------------------------------------------------


def make_model(out: Path, layers: int, vocab: int, seed: int = 0) -> Path:
    """A bf16 master with 2B-4T shapes written tensor by tensor, then packed by bitconvert."""
    import torch

    from bitconvert.convert import convert
    from bitconvert.formats import WriteOptions
    from bitconvert.safetensors_io import PlannedTensor, SafetensorsWriter
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
    plan = [PlannedTensor(name, torch.bfloat16, shape) for name, shape in shapes.items()]
    with SafetensorsWriter(master / "model.safetensors", plan, {"format": "pt"}) as w:
        for t in plan:
            if len(t.shape) == 1:
                value = 1 + 0.1 * torch.randn(t.shape, generator=g)
            elif t.name == "model.embed_tokens.weight":
                value = torch.randn(t.shape, generator=g)
            else:
                value = 0.02 * torch.randn(t.shape, generator=g)
            w.write(t.name, value.to(torch.bfloat16))
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
    convert(master, packed, "hf-packed", WriteOptions(linear_class=LinearClass.AUTOBITLINEAR))
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
    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        self.model.eval()

    def prefill(self, ids: list[int]):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1], cache

    def step(self, token: int, cache):
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([[token]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


class RuntimeEngine:
    def __init__(self, path: Path, dtype_name: str) -> None:
        import torch

        from bitconvert.runtime import load_model

        self.model = load_model(path, dtype=getattr(torch, dtype_name))

    def prefill(self, ids: list[int]):
        cache = self.model.new_cache(capacity=4096)
        return self.model.forward(ids, cache, last_only=True)[0], cache

    def step(self, token: int, cache):
        return self.model.forward([token], cache, last_only=True)[0]


def run_engine(engine: str, path: Path, prompt_len: int, decode: int, repeats: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    if engine == "transformers":
        import transformers  # noqa: F401  (imports count as baseline, not as the model's memory)
    else:
        import bitconvert.runtime  # noqa: F401
    baseline = _rss_bytes()
    start = time.perf_counter()
    if engine == "transformers":
        eng = TransformersEngine(path)
    else:
        eng = RuntimeEngine(path, {"bitconvert-bf16": "bfloat16", "bitconvert-f32": "float32"}[engine])
    load_s = time.perf_counter() - start
    after_load = _rss_bytes()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 1000, (prompt_len,), generator=g).tolist()

    def decode_run() -> tuple[float, list[int]]:
        logits, cache = eng.prefill(ids)
        tokens = [int(logits.argmax())]
        t0 = time.perf_counter()
        for _ in range(decode):
            logits = eng.step(tokens[-1], cache)
            tokens.append(int(logits.argmax()))
        return time.perf_counter() - t0, tokens

    decode_run()  # warm-up: same shapes as measured (transformers compiles its quantizers here)
    decode_run()
    prefill_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        eng.prefill(ids)
        prefill_times.append(time.perf_counter() - t0)
    decode_times = []
    tokens: list[int] = []
    for _ in range(repeats):
        seconds, tokens = decode_run()
        decode_times.append(seconds)
    return {
        "engine": engine,
        "threads": torch.get_num_threads(),
        "load_seconds": round(load_s, 2),
        "prefill_tokens": prompt_len,
        "prefill_tok_s_best": round(prompt_len / min(prefill_times), 2),
        "prefill_tok_s_median": round(prompt_len / statistics.median(prefill_times), 2),
        "decode_tokens": decode,
        "decode_tok_s_best": round(decode / min(decode_times), 2),
        "decode_tok_s_median": round(decode / statistics.median(decode_times), 2),
        "rss_after_imports_mib": round(baseline / 2**20, 1),
        "rss_after_load_mib": round(after_load / 2**20, 1),
        "peak_rss_mib": round(_peak_rss_bytes() / 2**20, 1),
        "peak_above_imports_mib": round((_peak_rss_bytes() - baseline) / 2**20, 1),
        "greedy_tokens": tokens[:8],
    }


# --- driver -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=SHAPES_2B4T["vocab"])
    ap.add_argument("--prompt", type=int, default=128, help="prefill length in tokens")
    ap.add_argument("--decode", type=int, default=32, help="decode steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--threads", type=int, help="torch threads per engine (default: torch's choice)")
    ap.add_argument("--model", type=Path, help="reuse a packed checkpoint instead of generating one")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_engine(args.child, args.model, args.prompt, args.decode, args.repeats, args.threads)))
        return

    with tempfile.TemporaryDirectory(prefix="bitconvert-bench-") as tmp:
        t0 = time.perf_counter()
        path = args.model or make_model(Path(tmp), args.layers, args.vocab)
        gen_s = time.perf_counter() - t0
        results = []
        load_before = os.getloadavg()[0]
        for engine in args.engines.split(","):
            cmd = [sys.executable, __file__, "--child", engine, "--model", str(path), "--prompt", str(args.prompt),
                   "--decode", str(args.decode), "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                raise SystemExit(f"{engine} failed:\n{r.stderr[-3000:]}")
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
        summary = {
            "model": {
                "layers": args.layers, **SHAPES_2B4T, "vocab": args.vocab, "format": "hf-packed autobitlinear bf16"
            },
            "generate_seconds": round(gen_s, 1),
            "cpu_count": os.cpu_count(),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "results": results,
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    keys = ["load_seconds", "prefill_tok_s_best", "prefill_tok_s_median", "decode_tok_s_best", "decode_tok_s_median",
            "rss_after_load_mib", "peak_rss_mib", "peak_above_imports_mib", "greedy_tokens"]
    m = summary["model"]
    print(
        f"model: {m['layers']} layers of 2B-4T shape (hidden {m['hidden']}, intermediate {m['intermediate']}, "
        f"heads {m['heads']}/{m['kv_heads']}), vocab {m['vocab']}; prefill {args.prompt} tokens, "
        f"decode {args.decode}; {results[0]['threads']} threads; load average {summary['load_average_before_after']}"
    )
    width = max(len(k) for k in keys)
    print(" " * width + "".join(f"{r['engine']:>20}" for r in results))
    for k in keys:
        print(f"{k:<{width}}" + "".join(f"{str(r[k]):>20}" for r in results))


if __name__ == "__main__":
    main()
