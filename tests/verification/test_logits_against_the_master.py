"""``verify PACKED --against MASTER --logits`` judges what the packed format holds: the master runs
quantized as PACKED stores its weights (scale dtype and convention), so a correct pack passes with
either scale dtype, for every family, and one flipped code still fails, its line saying what limits
the comparison."""

from __future__ import annotations

import pytest
from conftest import FIXTURES, cli
from verify_tools import Q, damaged_copy, failing, nonzero_field, verify_json

from bitconvert.convert import convert
from bitconvert.verify import verify_against

MASTERS = ["bitnet-2b4t-master", "1bitllm-master", "llama-master"]


@pytest.mark.parametrize("scale_dtype", ["bf16", "f32"])
@pytest.mark.parametrize("master", MASTERS)
def test_a_correct_pack_passes_against_its_master(tmp_path, master, scale_dtype):
    packed = tmp_path / "packed"
    convert(FIXTURES / master, packed, "hf-packed", {"scale_dtype": scale_dtype})
    report = verify_against(packed, FIXTURES / master, logits=True)
    assert report.passed, [(c.name, c.detail) for c in report.failures]
    assert report.figures["logits_max_abs_diff"] == 0.0  # equal weights, the same arithmetic


def test_the_command_line_passes_the_documented_flow(tmp_path):
    """The README's CI flow, as typed: pack with the defaults (a bf16 weight_scale), then verify."""
    master = FIXTURES / "bitnet-2b4t-master"
    assert cli("pack", master, tmp_path / "p").returncode == 0
    r, data = verify_json(tmp_path / "p", "--against", master, "--logits")
    assert r.returncode == 0 and data["passed"], failing(r)


@pytest.mark.parametrize("scale_dtype", ["bf16", "f32"])
def test_one_flipped_code_fails_and_says_what_limits_it(tmp_path, scale_dtype):
    master = FIXTURES / "bitnet-2b4t-master"
    convert(master, tmp_path / "packed", "hf-packed", {"scale_dtype": scale_dtype})

    def flip(t):
        w = t[Q].clone()
        r, c = nonzero_field(w)
        w[r, c] = int(w[r, c]) ^ 0b10  # field 0 <-> 2: -1 <-> +1
        t[Q] = w

    bad = damaged_copy(tmp_path / "packed", tmp_path / "bad", flip)
    r, data = verify_json(bad, "--against", master, "--logits")
    assert r.returncode == 1 and not data["passed"]
    names = {c["name"] for c in failing(r)}
    assert "against.logits" in names and "against.codes" in names, names
    (logits,) = [c for c in failing(r) if c["name"] == "against.logits"]
    assert logits["figure"] > logits["threshold"] and "limit" in logits["detail"], logits


@pytest.mark.parametrize("kind", ["bitnet-2b4t", "1bitllm", "llama", "bitnet-2b4t-256"])
def test_the_shipped_packed_fixtures_pass_against_their_masters(kind):
    """1bitLLM's packed fixture holds its fp16 master's dense tensors in bf16 (a --dtype choice, which
    the tensor checks measure): the master runs with them in bf16 too, and the line says so."""
    report = verify_against(FIXTURES / f"{kind}-packed", FIXTURES / f"{kind}-master", logits=True)
    assert report.passed and report.figures["logits_max_abs_diff"] == 0.0, [c.detail for c in report.failures]
    (logits,) = [c for c in report.checks if c.name == "logits"]
    assert ("F16 -> BF16" in logits.detail) == (kind == "1bitllm"), logits.detail
