"""Full-size synthetic BitNet b1.58 bf16 masters, for benchmarks (no real weights needed).

    python benchmarks/synthetic.py OUT_DIR [--size 2b|8b] [--layers N]

- ``2b``: the tensor names, shapes, dtype and config.json of microsoft/bitnet-b1.58-2B-4T-bf16
  (30 layers: 4.83 GB in one model.safetensors).
- ``8b``: the same 2B-4T architecture (BitNetForCausalLM, relu², sub-norms, tied embedding) at the
  widths of Llama3-8B-1.58 (hidden 4096, intermediate 14336, 32 layers, 32/8 heads, vocabulary
  128,256): 15.0 GB in four shards with their index, as published 8B checkpoints are stored.

Weights are N(0, 0.02) (norms 1 + N(0, 0.1)), written tensor by tensor, so memory stays at one tensor.
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


CONFIG_8B = dict(
    CONFIG_2B4T, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192,
)
#: size -> (config, number of shards)
SIZES = {"2b": (CONFIG_2B4T, 1), "8b": (CONFIG_8B, 4)}


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


def write_synthetic(out: Path, layers: int | None = None, seed: int = 0, size: str = "2b") -> Path:
    base, shards = SIZES[size]
    cfg = dict(base, num_hidden_layers=layers or base["num_hidden_layers"])
    out.mkdir(parents=True, exist_ok=True)
    plan = [PlannedTensor(n, "BF16", s) for n, s in sorted(shapes(cfg).items())]
    g = torch.Generator().manual_seed(seed)
    groups = _split(plan, shards)
    names = ["model.safetensors"] if shards == 1 else [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for fname, group in zip(names, groups):
        with SafetensorsWriter(out / fname, group, {"format": "pt"}) as w:
            for t in group:
                if len(t.shape) == 1:
                    x = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
                else:
                    x = torch.randn(t.shape, generator=g) * 0.02
                w.write(t.name, Dense.from_torch(x.to(torch.bfloat16)))
    if shards > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in plan)},
                 "weight_map": {t.name: f for f, group in zip(names, groups) for t in group}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(ROOT / "fixtures" / "tokenizer" / f, out / f)
    return out


def _split(plan: list[PlannedTensor], shards: int) -> list[list[PlannedTensor]]:
    """Tensors in order, cut into ``shards`` files of about equal size."""
    total = sum(t.nbytes for t in plan)
    groups: list[list[PlannedTensor]] = [[] for _ in range(shards)]
    done = 0
    for t in plan:
        groups[min(shards - 1, done * shards // total)].append(t)
        done += t.nbytes
    return [g for g in groups if g]


def weight_files(master: Path) -> list[Path]:
    return sorted(master.glob("*.safetensors"))


def master_bytes(master: Path) -> int:
    return sum(f.stat().st_size for f in weight_files(master))


def ensure_master(master: Path, layers: int | None = None, size: str = "2b") -> None:
    """The synthetic master at ``master``: kept if it is there with this config, else (re)written."""
    base = SIZES[size][0]
    want = dict(base, num_hidden_layers=layers or base["num_hidden_layers"])
    cfg = master / "config.json"
    if weight_files(master) and cfg.is_file():
        if json.loads(cfg.read_text()) == want:
            return
        shutil.rmtree(master)
    write_synthetic(master, layers, size=size)


def warm(path: Path) -> None:
    """Read ``path`` (a file, or a master's weight files) once so every timed job starts from a warm page cache."""
    for f in weight_files(path) if path.is_dir() else [path]:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
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
    ap.add_argument("--size", choices=sorted(SIZES), default="2b")
    ap.add_argument("--layers", type=int, default=None, help="default: the model's own")
    args = ap.parse_args()
    p = write_synthetic(args.out, args.layers, size=args.size)
    print(f"wrote {p} ({master_bytes(p):,} bytes in {len(weight_files(p))} file(s))")
