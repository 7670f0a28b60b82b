"""The Nanotron rules of ``verify --target`` hold in Nanotron's own code, run on CPU at each flavor's
commit (``tests/nanotron_consumer_probe.py``): no sub-norm parameters, no decoder norms in PR #180,
plain linears on main, RoPE base 10000 whatever the config says, and the fused q/k/v error that
bitconvert measures is the one Nanotron's weight_quant makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from bitconvert.formats import open_checkpoint
from bitconvert.verify import verify_target
from bitconvert.verify.nanotron_checks import fused_error

PEERS = ROOT.parent / "shared" / "peers"


def outcome(src, target: str) -> dict[str, bool]:
    """rule name -> passed, for one consumer."""
    return {c.name.split(".")[-1]: c.passed for c in verify_target(src, target).checks}


def check_of(src, target: str, rule: str):
    return next(c for c in verify_target(src, target).checks if c.name == f"{target}.{rule}")


TREES = {"nanotron-pr180": "pr180-2239f41e", "nanotron-pr178": "pr178-e1c3c1a5", "nanotron-main": "main-2411b022"}


SUB_NORM_NAMES = ("sub_norm", "inner_attn_ln", "ffn_layernorm")


def nanotron_probe(tree: str, master: Path, out: Path) -> dict:
    if not (PEERS / "nanotron" / tree).is_dir():
        pytest.skip(f"Nanotron tree {tree} is not in ../shared/peers")
    cmd = [sys.executable, str(ROOT / "tests" / "nanotron_consumer_probe.py"), str(PEERS / "nanotron"), tree,
           str(master), str(out)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("target", list(TREES))
def test_nanotron_builds_what_the_rules_say(target, tmp_path):
    master = FIXTURES / "bitnet-2b4t-master"  # rope_theta 500000, relu², sub-norms
    probe = nanotron_probe(TREES[target], master, tmp_path / "probe.json")
    params = probe["parameters"]
    # sub_norms: Nanotron builds no sub-norm parameter
    assert params and not any(s in p for p in params for s in SUB_NORM_NAMES)
    assert not outcome(master, target)["sub_norms"]
    assert outcome(FIXTURES / "llama-master", target)["sub_norms"]
    if target == "nanotron-pr180":  # no decoder norms at all
        assert not any("input_layernorm" in p or "post_attention_layernorm" in p for p in params)
        assert not outcome(master, target)["decoder_norms"]
    if target == "nanotron-main":  # plain linears: the latent weight runs unquantized
        assert probe["o_proj_class"] == "TensorParallelRowLinear" and probe["o_proj_is_plain_matmul"]
        assert not outcome(master, target)["quantization"]
        return
    # rope_theta: the BitNet config cannot hold it, every rotary module uses 10000
    assert "rope_theta" not in probe["config_fields"] and probe["rope_bases"] == [10000.0]
    c = check_of(master, target, "rope_theta")
    assert not c.passed and c.figure == 500000.0
    assert outcome(FIXTURES / "1bitllm-master", target)["rope_theta"]
    # fused_scales: Nanotron's weight_quant on the fused q/k/v, as bitconvert measures it
    ours = fused_error(open_checkpoint(master), 0, "qkv_proj")
    assert probe["fused_qkv_relative_error"] > 0.01
    assert ours == pytest.approx(probe["fused_qkv_relative_error"], rel=1e-4)
    assert not outcome(master, target)["fused_scales"]
