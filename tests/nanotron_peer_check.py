"""Load checkpoints with Nanotron's own code (one flavor's source tree), check them, save them back.

Run by tests/peers/test_nanotron_loads_our_checkpoints.py in a subprocess (under ``torchrun
--nproc-per-node N`` for TP > 1):

    python nanotron_peer_check.py PEERS_DIR TREE JOBS.json OUT_DIR

PEERS_DIR is ``shared/peers/nanotron``; TREE one of its source folders. Every job names a
checkpoint written by bitconvert and the Hugging Face master it came from. Per job and rank this
writes ``OUT_DIR/<job>-rank<r>.json``: the parameters Nanotron built and the ones whose loaded
values differ from the master's, the weight files ``load_weights`` opened, and where
``save_weights`` put Nanotron's own save of the loaded model. Nothing from bitconvert is imported
here: the expected value of every parameter comes from the master and Nanotron's own sharding
metadata (``ShardedInfo.local_global_slices_pairs``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path

PEERS, TREE, JOBS, OUT = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, str(PEERS / "cpu-shims"))
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # main asserts it at TP > 1
import nanotron_cpu

torch = nanotron_cpu.setup(str(PEERS / TREE), factories=False)  # after the imports: main jit-scripts at import

import nanotron.serialize.weights as nt_weights
from nanotron.config import get_config_from_file
from nanotron.models import build_model
from nanotron.parallel import ParallelContext
from nanotron.serialize import load_weights, save_weights
from nanotron.serialize.metadata import load_meta, save_meta
from nanotron.trainer import mark_tied_parameters
from safetensors.torch import load_file

if TREE.startswith("main"):
    from nanotron.models.llama import LlamaForTraining as MODEL_CLASS
else:
    from nanotron.models.llama_bitnet import LlamaForTrainingBitNet as MODEL_CLASS

nanotron_cpu.patch_factories()
RANK = int(os.environ.get("RANK", "0"))


def hf_rows_to_interleaved(w, heads: int):
    """HF's rotate_half pairs (j, j + d/2) of every head -> adjacent pairs (2j, 2j + 1)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(w.shape[0], -1)


def expected_global(name: str, master: dict, mc, interleaved: bool):
    """The unsharded value of Nanotron parameter ``name`` built from the HF master."""

    def padded(w):
        out = torch.zeros(mc.vocab_size, w.shape[1], dtype=w.dtype)
        out[: w.shape[0]] = w
        return out

    embed = master["model.embed_tokens.weight"]
    if name == "model.token_position_embeddings.pp_block.token_embedding.weight":
        return padded(embed)
    if name == "model.lm_head.pp_block.weight":
        return padded(master.get("lm_head.weight", embed))
    if name == "model.final_layer_norm.pp_block.weight":
        return master["model.norm.weight"]
    m = re.fullmatch(r"model\.decoder\.(\d+)\.pp_block\.(\w+)\.(\w+)(?:\.(\w+))?", name)
    assert m, name
    hf = f"model.layers.{m.group(1)}."
    block, leaf = m.group(2), m.group(3)
    if block in ("input_layernorm", "post_attention_layernorm"):
        return master[hf + block + ".weight"]
    if leaf == "qkv_proj":
        q, k, v = (master[hf + f"self_attn.{x}_proj.weight"] for x in "qkv")
        if interleaved:
            q, k = hf_rows_to_interleaved(q, mc.num_attention_heads), hf_rows_to_interleaved(k, mc.num_key_value_heads)
        return torch.cat([q, k, v])
    if leaf == "o_proj":
        return master[hf + "self_attn.o_proj.weight"]
    if leaf == "gate_up_proj":
        return torch.cat([master[hf + "mlp.gate_proj.weight"], master[hf + "mlp.up_proj.weight"]])
    if leaf == "down_proj":
        return master[hf + "mlp.down_proj.weight"]
    raise AssertionError(f"no master tensor for {name}")


def expected_local(param, full):
    if not param.is_sharded:
        return full
    info = param.get_sharded_info()
    out = torch.empty_like(param.data, dtype=full.dtype)
    for pair in info.local_global_slices_pairs:
        out[pair.local_slices] = full[pair.global_slices]
    return out


def check(job: dict, pc) -> dict:
    ckpt, master = Path(job["ckpt"]), load_file(job["master"])
    config = get_config_from_file(str(ckpt / "config.yaml"))
    mc = config.model.model_config
    # model_config.json is parsed the way Nanotron's resume path parses it: Cls(**json)
    mc_json = type(mc)(**json.loads((ckpt / "model_config.json").read_text()))
    interleaved = getattr(mc, "rope_interleaved", True)  # the PRs' model interleaves, main reads its config
    model = build_model(
        model_builder=lambda: MODEL_CLASS(
            config=mc, parallel_context=pc, parallel_config=config.parallelism, random_states=None
        ),
        parallel_context=pc,
        dtype=config.model.dtype,
        device=torch.device("cpu"),
    )
    mark_tied_parameters(model=model, parallel_context=pc, parallel_config=config.parallelism)
    opened: list[str] = []
    real_safe_open = nt_weights.safe_open

    def recording_safe_open(path, *args, **kwargs):
        opened.append(str(Path(path).resolve()))
        return real_safe_open(path, *args, **kwargs)

    nt_weights.safe_open = recording_safe_open
    try:
        load_weights(model=model, parallel_context=pc, root_folder=ckpt)
    finally:
        nt_weights.safe_open = real_safe_open
    names, differ = [], []
    for name, param in model.named_parameters():
        names.append(name)
        want = expected_local(param, expected_global(name, master, mc, interleaved)).to(param.dtype)
        if not torch.equal(param.data, want):
            differ.append(name)
    saved = Path(job["save_to"])
    save_weights(model=model, parallel_context=pc, root_folder=saved)
    save_meta(pc, saved, load_meta(pc, ckpt).metas)  # what a resumed run writes: no custom_metas
    if RANK == 0:
        (saved / "model_config.json").write_text(json.dumps(asdict(mc)))
    return {
        "model_config_class": type(mc).__name__,
        "model_config_json_equal": asdict(mc_json) == asdict(mc),
        "parameters": names,
        "differ": differ,
        "opened": sorted(set(opened)),
        "dtype": str(config.model.dtype),
    }


def main() -> None:
    jobs = json.loads(JOBS.read_text())
    config = get_config_from_file(str(Path(jobs[0]["ckpt"]) / "config.yaml"))
    pc = ParallelContext(
        tensor_parallel_size=config.parallelism.tp, pipeline_parallel_size=1, data_parallel_size=1
    )
    for i, job in enumerate(jobs):
        try:
            result = check(job, pc)
        except Exception as exc:  # noqa: BLE001  (reported to the test, which names the job)
            result = {"error": f"{type(exc).__name__}: {exc}"}
        (OUT / f"{i}-rank{RANK}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
