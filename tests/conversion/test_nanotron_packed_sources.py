"""Packed (ternary) sources into Nanotron: an approximation only with --allow-approximate (``unpack``
output counts as packed), its error reported and recomputed independently, the exact way back
through the recorded scales; the vocabulary padded for the TP size and stripped on read, and a TP
size the heads cannot split refused."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, cli, read_all
from nanotron_tools import SHARD, shard, to, tree

from bitconvert.errors import UsageError
from bitconvert.ternary import unpack_codes


def test_a_packed_source_needs_allow_approximate(tmp_path):
    with pytest.raises(UsageError, match="--allow-approximate"):
        to(FIXTURES / "llama-packed", tmp_path / "nt", "nanotron", tp=2)
    assert not (tmp_path / "nt").exists()
    r = cli("convert", FIXTURES / "bitnet-2b4t-packed", tmp_path / "nt", "--to", "nanotron", "--allow-lossy")
    assert r.returncode == 2 and "--allow-approximate" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nt").exists() and not list(tmp_path.iterdir())


def test_unpack_output_counts_as_packed(tmp_path):
    to(FIXTURES / "llama-packed", tmp_path / "u", "hf-bf16")  # what `bitconvert unpack` does
    with pytest.raises(UsageError, match="--allow-approximate"):
        to(tmp_path / "u", tmp_path / "nt", "nanotron")
    to(tmp_path / "u", tmp_path / "nt", "nanotron", allow_approximate=True)
    to(tmp_path / "nt", tmp_path / "p", "hf-packed")
    a, b = read_all(FIXTURES / "llama-packed"), read_all(tmp_path / "p")
    assert all(torch.equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in a)


def _effective(latent: torch.Tensor) -> torch.Tensor:
    """Nanotron's BitNet weight quantization of one rank's tensor, written here from its BitLinear (weight_quant: absmean, round, clamp)."""
    w = latent.double()
    m = w.abs().mean().clamp(min=1e-5)
    return (w / m).round().clamp(-1, 1) * m


@pytest.mark.parametrize("tp", [1, 2])
def test_the_approximation_is_reported_and_the_way_back_is_exact(tmp_path, tp):
    src, nt = FIXTURES / "bitnet-2b4t-packed", tmp_path / "nt"
    report = to(src, nt, "nanotron", "F32", tp=tp, allow_approximate=True)
    assert report.ternary_sources == {"approximated": 14}
    errors = report.details["approximation"]
    assert len(errors) == 14 and report.warnings and "approximated" in report.warnings[0]
    packed = read_all(src)
    # Independent recomputation of the reported error for the o_proj of layer 0 (split on dim 1).
    codes = torch.from_numpy(unpack_codes(packed["model.layers.0.self_attn.o_proj.weight"].numpy())).double()
    want = codes * packed["model.layers.0.self_attn.o_proj.weight_scale"].double()  # autobitlinear: mean|W|
    folder = nt / "model/model/decoder/0/pp_block/attn/o_proj"
    got = torch.cat([_effective(shard(folder / SHARD.format(r=r, t=tp))[0]) for r in range(tp)], dim=1)
    rel = float((got - want).norm() / want.norm())
    assert rel == pytest.approx(errors["model.layers.0.self_attn.o_proj.weight"]["relative_error"], rel=1e-3, abs=1e-6)
    if tp == 1:  # one unfused, unsplit matrix: t * mean|W| / p is exact (docs/nanotron.md, "Packed sources")
        for name in ("o_proj", "down_proj"):
            full = f"model.layers.1.{'self_attn' if name == 'o_proj' else 'mlp'}.{name}.weight"
            assert errors[full]["relative_error"] < 1e-6 and errors[full]["codes_changed"] == 0
        assert rel < 1e-6
    # fused q|k|v share one scale per rank, so they cannot all be exact
    assert max(errors[f"model.layers.0.self_attn.{x}_proj.weight"]["relative_error"] for x in "qkv") > 1e-4
    to(nt, tmp_path / "back", "hf-packed")
    back = read_all(tmp_path / "back")
    assert sorted(back) == sorted(packed)
    for name in packed:
        assert back[name].dtype == packed[name].dtype and torch.equal(back[name], packed[name]), name


def test_resharding_a_packed_source_equals_direct_conversion(tmp_path):
    src = FIXTURES / "llama-packed"
    to(src, tmp_path / "d2", "nanotron", tp=2, allow_approximate=True)
    to(src, tmp_path / "d1", "nanotron", tp=1, allow_approximate=True)
    with pytest.raises(UsageError):  # still ternary weights behind the latent ones
        to(tmp_path / "d2", tmp_path / "r1", "nanotron", tp=1)
    to(tmp_path / "d2", tmp_path / "r1", "nanotron", tp=1, allow_approximate=True)
    assert tree(tmp_path / "r1") == tree(tmp_path / "d1")


def test_the_vocabulary_is_padded_for_tp_and_stripped_on_read(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama", "master", hidden=48, intermediate=96, heads=3, kv_heads=3)
    nt = tmp_path / "nt"
    report = to(src, nt, "nanotron", tp=3)
    assert report.details["vocab_padding"].startswith("320 -> 321")
    assert json.loads((nt / "model_config.json").read_text())["vocab_size"] == 321
    for path in ("token_position_embeddings/pp_block/token_embedding", "lm_head/pp_block"):
        last, meta = shard(nt / "model/model" / path / SHARD.format(r=2, t=3))
        assert meta["unsharded_shape"] == "(321, 48)" and last.shape == (107, 48)
        assert not last[-1].any()  # the padding row
    to(nt, tmp_path / "back", "hf-bf16")
    a, b = read_all(src), read_all(tmp_path / "back")
    assert all(torch.equal(a[n], b[n]) for n in a) and b["lm_head.weight"].shape[0] == 320


def test_fewer_key_value_heads_than_tp_is_refused(tmp_path):
    r = cli("convert", FIXTURES / "llama-master", tmp_path / "nt", "--to", "nanotron", "--tp", "4")
    assert r.returncode == 2 and "2 key/value heads" in r.stderr and "num_key_value_heads >= tp" in r.stderr
    assert not (tmp_path / "nt").exists()
    with pytest.raises(UsageError, match="--tp 3"):
        to(FIXTURES / "llama-master", tmp_path / "nt", "nanotron", tp=3)
    with pytest.raises(UsageError, match="--nanotron-version"):
        to(FIXTURES / "llama-master", tmp_path / "nt", "nanotron", nanotron_version="2.0")
    assert not (tmp_path / "nt").exists()
