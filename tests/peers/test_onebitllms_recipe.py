"""``--recipe onebitllms`` writes what onebitllms 0.0.4 (the packer behind Falcon-E) writes, tensor for
tensor and config key for key; its arithmetic (bf16) is not transformers' (fp32), which is why the
recipe exists."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, read_all

from bitconvert.convert import convert
from bitconvert.dtypes import Dense
from bitconvert.ternary.recipes import onebitllms_quantize


def test_the_onebitllms_recipe_writes_onebitllms_output(onebitllms_output, tmp_path):
    ours = tmp_path / "ours"
    convert(FIXTURES / "llama-master", ours, "hf-packed", {"recipe": "onebitllms"})
    theirs_t, ours_t = read_all(onebitllms_output), read_all(ours)
    assert sorted(theirs_t) == sorted(ours_t)
    for name, t in theirs_t.items():
        assert ours_t[name].dtype == t.dtype, name
        assert torch.equal(ours_t[name], t), name
    cfg_theirs = json.loads((onebitllms_output / "config.json").read_text())
    cfg_ours = json.loads((ours / "config.json").read_text())
    for key in ("is_bitnet_config", "pretraining_tp", "quantization_config"):
        assert cfg_ours[key] == cfg_theirs[key], key


def test_transformers_arithmetic_differs_from_onebitllms(onebitllms_output, tmp_path):
    """The reason the recipe exists: fp32 and bf16 arithmetic disagree in codes and scales."""
    ours = tmp_path / "ours"
    convert(FIXTURES / "llama-master", ours, "hf-packed", {"linear_class": "bitlinear"})
    theirs_t, ours_t = read_all(onebitllms_output), read_all(ours)
    packed = [n for n in theirs_t if theirs_t[n].dtype == torch.uint8]
    bytes_differ = sum(int((theirs_t[n] != ours_t[n]).sum()) for n in packed)
    total = sum(theirs_t[n].numel() for n in packed)
    scales_differ = sum(not torch.equal(theirs_t[n], ours_t[n]) for n in theirs_t if n.endswith("weight_scale"))
    print(
        f"\ntransformers vs onebitllms: {bytes_differ} of {total} packed bytes, {scales_differ} of {len(packed)} scales"
    )
    assert bytes_differ > 0 and scales_differ > 0


def test_the_recipes_arithmetic_is_onebitllms_weight_quant():
    """The pure function against onebitllms' own _weight_quant on a bf16 tensor, codes and scale."""
    q = pytest.importorskip("onebitllms.utils.quantization_utils", reason="pip install onebitllms==0.0.4")
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16) * 0.02
    u, scale = q._weight_quant(w.clone())
    tw = onebitllms_quantize(Dense.from_torch(w))
    assert torch.equal(torch.from_numpy(tw.codes).to(torch.bfloat16), u)
    stored = Dense.from_bytes(tw.scale.data, tw.scale.dtype_name, (1,)).torch()
    assert stored.dtype == scale.dtype == torch.bfloat16 and torch.equal(stored, scale.reshape(1))
