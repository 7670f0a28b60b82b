"""Full-size synthetic BitNet b1.58 2B-4T bf16 master, for benchmarks (no real weights needed).

    python benchmarks/synthetic.py OUT_DIR [--layers 30]

Same tensor names, shapes, dtype and config.json as microsoft/bitnet-b1.58-2B-4T-bf16 (30 layers:
4.83 GB in one model.safetensors). Written tensor by tensor, so memory stays at one tensor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bitconvert.dtypes import Dense  # noqa: E402
from bitconvert.io.safetensors import PlannedTensor, SafetensorsWriter  # noqa: E402

CONFIG_2B4T = {
    "architectures": ["BitNetForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "relu2",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 6912,
    "max_position_embeddings": 4096,
    "model_type": "bitnet",
    "num_attention_heads": 20,
    "num_hidden_layers": 30,
    "num_key_value_heads": 5,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
    "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
}


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    out = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out.update({
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "self_attn.attn_sub_norm.weight": (h,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "mlp.ffn_sub_norm.weight": (i,),
        })
    out["model.norm.weight"] = (h,)
    return out


def write_synthetic(out: Path, layers: int = 30, seed: int = 0) -> Path:
    cfg = dict(CONFIG_2B4T, num_hidden_layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    plan = [PlannedTensor(n, "BF16", s) for n, s in sorted(shapes(cfg).items())]
    g = torch.Generator().manual_seed(seed)
    with SafetensorsWriter(out / "model.safetensors", plan, {"format": "pt"}) as w:
        for t in plan:
            if len(t.shape) == 1:
                x = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
            else:
                x = torch.randn(t.shape, generator=g) * 0.02
            w.write(t.name, Dense.from_torch(x.to(torch.bfloat16)))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(ROOT / "fixtures" / "tokenizer" / f, out / f)
    return out


def ensure_master(master: Path, layers: int) -> None:
    """The synthetic master at ``master`` with ``layers`` layers: kept if it is there, else (re)written."""
    cfg = master / "config.json"
    if (master / "model.safetensors").is_file() and cfg.is_file():
        if json.loads(cfg.read_text()).get("num_hidden_layers") == layers:
            return
        shutil.rmtree(master)
    write_synthetic(master, layers)


def warm(path: Path) -> None:
    """Read ``path`` once so every timed job starts from a warm page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def prepare(doc: str, work_name: str, *, rounds: int | None = None) -> tuple[argparse.Namespace, Path, Path]:
    """What every full-size benchmark starts with: its options (``--dir`` for the master, ``--layers``,
    ``--json``, and ``--rounds`` where it takes them), the master made or checked, and an empty work
    folder ``work_name`` beside it. Returns (options, master folder, work folder)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "bench-out" / "2b4t-bf16")
    ap.add_argument("--layers", type=int, default=30)
    if rounds is not None:
        ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ensure_master(args.dir, args.layers)
    work = args.dir.parent / work_name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return args, args.dir, work


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=30)
    args = ap.parse_args()
    p = write_synthetic(args.out, args.layers)
    print(f"wrote {p} ({(p / 'model.safetensors').stat().st_size:,} bytes)")
