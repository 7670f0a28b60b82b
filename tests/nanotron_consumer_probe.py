"""What one Nanotron source tree computes, asked of Nanotron's own code
(run by tests/peers/test_nanotron_consumer_rules.py).

    python nanotron_consumer_probe.py PEERS_DIR TREE MASTER_DIR OUT.json

Builds the tree's Llama model (the BitNet one in the PR trees) at TP 1 on the CPU with the shapes
of MASTER_DIR's config, and writes: its parameter names, the fields of its model config class, the
RoPE base its attention modules hold, and, with Nanotron's ``weight_quant`` (PR trees) applied to
the master's fused q/k/v weight, the relative difference from quantizing q, k and v one by one.
Main: the class of ``o_proj`` and whether its forward is a plain matmul of the latent weight.
Nothing from bitconvert is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

PEERS, TREE, MASTER, OUT = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, str(PEERS / "cpu-shims"))
import nanotron_cpu

torch = nanotron_cpu.setup(str(PEERS / TREE), factories=False)

from nanotron.config import ParallelismArgs
from nanotron.models import build_model
from nanotron.parallel import ParallelContext
from safetensors.torch import load_file

MAIN = TREE.startswith("main")
if MAIN:
    from nanotron.config import LlamaConfig as CONFIG_CLASS
    from nanotron.models.llama import LlamaForTraining as MODEL_CLASS
else:
    from nanotron.config.models_config import LlamaBitNetConfig as CONFIG_CLASS
    from nanotron.models.llama_bitnet import LlamaForTrainingBitNet as MODEL_CLASS
    from nanotron.parallel.tensor_parallel.nn import weight_quant

nanotron_cpu.patch_factories()


def main() -> None:
    hf = json.loads((MASTER / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
            "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings")
    fields = {f.name for f in dataclasses.fields(CONFIG_CLASS)}
    given = {k: hf[k] for k in keys if k in fields}
    if "rope_theta" in fields:
        given["rope_theta"] = hf.get("rope_theta", 10000.0)
    mc = CONFIG_CLASS(**given)
    pc = ParallelContext(tensor_parallel_size=1, pipeline_parallel_size=1, data_parallel_size=1)
    par = ParallelismArgs(dp=1, pp=1, tp=1)
    model = build_model(
        model_builder=lambda: MODEL_CLASS(config=mc, parallel_context=pc, parallel_config=par, random_states=None),
        parallel_context=pc, dtype=torch.float32, device=torch.device("cpu"),
    )
    result = {
        "config_fields": sorted(fields),
        "parameters": [n for n, _ in model.named_parameters()],
        "rope_bases": sorted({float(getattr(m, a)) for m in model.modules() for a in ("theta", "base")
                              if isinstance(getattr(m, a, None), (int, float))}),
    }
    master = load_file(str(MASTER / "model.safetensors"))
    parts = [master[f"model.layers.0.self_attn.{p}_proj.weight"].float() for p in "qkv"]
    if MAIN:
        o_proj = next(m for n, m in model.named_modules() if n.endswith("attn.o_proj"))
        x = torch.randn(3, o_proj.weight.shape[1])
        with torch.no_grad():
            o_proj.weight.copy_(master["model.layers.0.self_attn.o_proj.weight"].float())
            plain = bool(torch.allclose(o_proj(x), x @ o_proj.weight.T, atol=1e-6))
        result.update(o_proj_class=type(o_proj).__name__, o_proj_is_plain_matmul=plain)
    else:
        ref = torch.cat([weight_quant(w.clone()) for w in parts])
        fused = weight_quant(torch.cat(parts))
        result["fused_qkv_relative_error"] = float((fused - ref).norm() / ref.norm())
    OUT.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
