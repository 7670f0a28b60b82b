"""Nanotron itself loads bitconvert's Nanotron checkpoints, at each flavor's commit, at TP 1 and TP 2:
every parameter equals the master's, every stored file is read, and what Nanotron saves reads
back equal (less what Nanotron drops).

Nanotron runs from ``../shared/peers/nanotron`` (its source at the three commits, plus the CPU shims
that let it import and run without CUDA) in subprocesses only: ``tests/nanotron_peer_check.py``
builds the flavor's model with ``build_model``, loads the checkpoint with ``load_weights``,
compares every parameter with the master (using Nanotron's own sharding metadata) and saves the
model with ``save_weights`` / ``save_meta``. TP 2 runs as two gloo processes under torchrun. One
process per (flavor, TP) checks every fixture architecture, to keep the Nanotron start-up cost
(10-20 s) to six processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, ROOT, lossless_llama, read_all

from bitconvert.convert import convert
from bitconvert.formats import open_checkpoint

HERE = ROOT / "tests"
PEERS = ROOT.parent / "shared" / "peers" / "nanotron"


TREES = {"pr180": "pr180-2239f41e", "pr178": "pr178-e1c3c1a5", "main": "main-2411b022"}


CONFIG_CLASS = {"pr180": "LlamaBitNetConfig", "pr178": "LlamaBitNetConfig", "main": "LlamaConfig"}


#: what Nanotron needs beyond bitconvert's own dependencies (the `test` extra installs them)
NEEDS = {
    "pr180": ("dacite", "yaml", "packaging", "tqdm"),
    "pr178": ("dacite", "yaml", "packaging", "tqdm"),
    "main": ("dacite", "yaml", "packaging", "tqdm", "datasets", "transformers", "einops", "psutil", "torchtyping"),
}


KINDS = ("bitnet-2b4t", "1bitllm", "llama")


pytestmark = pytest.mark.skipif(
    not (PEERS / "cpu-shims" / "nanotron_cpu.py").is_file(),
    reason=f"Nanotron peer sources not found at {PEERS} (shared/peers is not part of the repository)",
)


def _missing(flavor: str) -> list[str]:
    return [m for m in NEEDS[flavor] if importlib.util.find_spec(m) is None]


def _run_nanotron(flavor: str, tp: int, jobs: list[dict], work: Path) -> list[list[dict]]:
    """Run the peer check once for all ``jobs``; per job, the result of every rank."""
    out = work / f"out-{flavor}-tp{tp}"
    out.mkdir()
    jobs_file = work / f"jobs-{flavor}-tp{tp}.json"
    jobs_file.write_text(json.dumps(jobs))
    script = [str(HERE / "nanotron_peer_check.py"), str(PEERS), TREES[flavor], str(jobs_file), str(out)]
    if tp == 1:
        cmd = [sys.executable, *script]
    else:
        port = str(29400 + os.getpid() % 500 + 10 * list(TREES).index(flavor))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(tp), "--master-port", port, *script]
    # Only the Nanotron process gets the shims (and Nanotron) on its path; it must not import bitconvert.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "MASTER_PORT")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=work, check=False)
    results = []
    for i in range(len(jobs)):
        files = [out / f"{i}-rank{rank}.json" for rank in range(tp)]
        if not all(f.is_file() for f in files):
            pytest.fail(f"Nanotron {flavor} tp={tp} wrote no result for job {i} (exit {r.returncode}):\n{r.stderr[-3000:]}")
        results.append([json.loads(f.read_text()) for f in files])
    return results


@pytest.fixture(scope="module")
def peer_runs(tmp_path_factory) -> dict:
    """Every fixture architecture converted for every flavor at TP 1 and 2, loaded and saved by Nanotron."""
    work = tmp_path_factory.mktemp("nanotron_peer")
    masters = {kind: FIXTURES / f"{kind}-master" for kind in KINDS}
    masters["llama-rope10k"] = lossless_llama(work / "llama-rope10k")
    runs = {}
    for flavor in TREES:
        if _missing(flavor):
            continue
        for tp in (1, 2):
            jobs, meta = [], []
            for kind, master in masters.items():
                if kind == "llama-rope10k" and flavor != "pr178":
                    continue
                ckpt = work / f"{flavor}-tp{tp}-{kind}"
                lossless = kind == "llama-rope10k"
                report = convert(master, ckpt, "nanotron", {"flavor": flavor, "tp": tp, "allow_lossy": not lossless}).report
                jobs.append({"ckpt": str(ckpt), "master": str(master / "model.safetensors"),
                             "save_to": str(work / f"{flavor}-tp{tp}-{kind}-saved")})
                meta.append((kind, master, ckpt, report))
            for (kind, master, ckpt, report), job, ranks in zip(meta, jobs, _run_nanotron(flavor, tp, jobs, work)):
                runs[(flavor, tp, kind)] = (master, ckpt, Path(job["save_to"]), report, ranks)
    return runs


CASES = [(f, tp, k) for f in TREES for tp in (1, 2) for k in KINDS] + [("pr178", 1, "llama-rope10k"),
                                                                       ("pr178", 2, "llama-rope10k")]


def _header(path: Path) -> str:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n).decode()


def _case(peer_runs, flavor, tp, kind):
    if _missing(flavor):
        pytest.skip(f"Nanotron {flavor} needs {', '.join(_missing(flavor))} (pip install -e .[test])")
    return peer_runs[(flavor, tp, kind)]


@pytest.mark.parametrize(("flavor", "tp", "kind"), CASES)
def test_nanotron_loads_every_parameter_with_the_masters_values(peer_runs, flavor, tp, kind):
    _, ckpt, _, report, ranks = _case(peer_runs, flavor, tp, kind)
    for rank, result in enumerate(ranks):
        assert "error" not in result, f"rank {rank}: {result.get('error')}"
        assert result["model_config_class"] == CONFIG_CLASS[flavor]
        assert result["model_config_json_equal"], "model_config.json and config.yaml describe different models"
        assert result["differ"] == [], f"rank {rank}: loaded values differ from the master's"
    # load_weights fails on a missing folder; that no folder or file goes unused is ours to check
    folders = {p.parent for p in (ckpt / "model/model").rglob("*.safetensors")}
    assert len(ranks[0]["parameters"]) == len(folders)
    stored = {str(p.resolve()) for p in (ckpt / "model/model").rglob("*.safetensors")}
    opened = set().union(*(r["opened"] for r in ranks))
    assert opened == stored, f"never read by Nanotron: {sorted(stored - opened)[:3]}"
    lossless = kind == "llama-rope10k"
    assert bool([w for w in report.warnings if w.startswith("lost in")]) is not lossless


@pytest.mark.parametrize(("flavor", "tp", "kind"), CASES)
def test_what_nanotron_saved_reads_back_equal(peer_runs, flavor, tp, kind):
    master, _, saved, _, _ = _case(peer_runs, flavor, tp, kind)
    meta = json.loads((saved / "checkpoint_metadata.json").read_text())
    assert meta["custom_metas"] is None  # Nanotron drops bitconvert's record when it saves
    if tp == 2:  # numpy 2 spells Nanotron's shapes "(np.int64(128), 64)"; the reader takes them as they are
        shapes = [json.loads(_header(f))["__metadata__"]["unsharded_shape"] for f in saved.rglob("*tp-rank-0-of-2*")]
        assert any("np.int64(" in text for text in shapes), shapes[:2]
    ckpt = open_checkpoint(saved)
    assert ckpt.facts.nanotron.flavor == flavor
    hf = read_all(master)
    for name, entry in ckpt.tensors.items():
        got = entry.load().torch()  # bitconvert's values are numpy; compared here in torch
        if flavor == "pr180" and "layernorm" in name:  # PR #180's decoder has no norms: read as ones
            assert torch.equal(got, torch.ones_like(got)), name
        else:
            assert torch.equal(got, hf[name].to(got.dtype)), name
    sub_norms = {n for n in hf if "sub_norm" in n or n.endswith(("inner_attn_ln.weight", "ffn_layernorm.weight"))}
    assert set(ckpt.tensors) == set(hf) - sub_norms  # the sub-norms are what Nanotron lost
    if sub_norms and ckpt.config.hidden_act == "relu2":
        assert any("relu2 without the attention/FFN sub-norms" in w for w in ckpt.warnings)
    if flavor != "main":  # the PRs' config has no rope_theta: the reader says it could not know it
        assert any("rope_theta is absent" in w for w in ckpt.warnings)
    else:
        assert ckpt.config.rope_theta == json.loads((master / "config.json").read_text())["rope_theta"]
