"""Absmean quantization is transformers' WeightQuant, bit for bit: the same codes (ties rounded to even,
the 1e-5 floor on mean|W|) on tied, random and shipped weights, whether quantized in memory or by
``pack``; activations are quantized as transformers' ActQuant does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli

from bitconvert.dtypes import Dense
from bitconvert.formats import open_checkpoint
from bitconvert.ternary import absmean_quantize

bitnet = pytest.importorskip("transformers.integrations.bitnet", reason="transformers (test extra) is the oracle")
MASTERS = ["bitnet-2b4t-master", "1bitllm-master", "llama-master"]


def weightquant_codes(w: torch.Tensor) -> torch.Tensor:
    """Codes as transformers computes them: WeightQuant returns codes / s with s > 0."""
    return torch.sign(bitnet.WeightQuant.forward(None, w.float())).to(torch.int8)


def tied_tensor(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Random multiples of 1/8 whose mean|W| is exactly 1/4 in fp32, so W*s hits ±0.5, ±1.5 exactly."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(-4, 5, (rows, cols), generator=g).float()  # values k/8, k in -4..4
    # make sum|k| = 2 * numel, so mean|W| = mean|k|/8 = 1/4 and s = 4: k=±1 -> W*s = ±0.5 (a tie)
    target = 2 * k.numel()
    flat = k.reshape(-1)
    i = 0
    while flat.abs().sum() != target:
        cur = flat.abs().sum()
        if cur < target and flat[i].abs() < 4:
            flat[i] = flat[i].sign() * (flat[i].abs() + 1) if flat[i] != 0 else 1.0
        elif cur > target and flat[i] != 0:
            flat[i] = flat[i].sign() * (flat[i].abs() - 1)
        i = (i + 1) % flat.numel()
    return (flat / 8).reshape(rows, cols)


@pytest.mark.parametrize("seed", range(4))
def test_codes_equal_weightquant_on_exact_ties(seed):
    w = tied_tensor(64, 48, seed)
    assert w.abs().mean().item() == 0.25
    ties = ((w * 4).abs() == 0.5).sum().item()
    assert ties > 100  # the test is about ties; make sure there are many
    codes, mean_abs = absmean_quantize(Dense.from_torch(w))
    assert mean_abs.item() == 0.25
    assert torch.equal(torch.from_numpy(codes), weightquant_codes(w))
    # round half to even: +-0.5 -> 0, +-1.5 -> +-2 -> clamped to +-1
    assert np.all(codes[((w * 4).abs() == 0.5).numpy()] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 7), (128, 96), (640, 256)])
def test_codes_equal_weightquant_on_random_weights(dtype, shape):
    g = torch.Generator().manual_seed(shape[0])
    w = (torch.randn(*shape, generator=g) * 0.02).to(dtype)
    codes, _ = absmean_quantize(Dense.from_torch(w))
    assert int((torch.from_numpy(codes) != weightquant_codes(w)).sum()) == 0


def test_an_all_zero_weight_uses_the_floor_as_torch_does():
    codes, mean_abs = absmean_quantize(Dense.of(np.zeros((8, 8), dtype=np.float32)))
    assert mean_abs.item() == pytest.approx(1e-5) and not codes.any()
    assert mean_abs == torch.zeros(8, 8).abs().mean().clamp(min=1e-5).item()  # torch's float32 floor


@pytest.mark.parametrize("packed_name", [m.replace("master", "packed") for m in MASTERS])
def test_shipped_packed_fixtures_hold_weightquants_codes(packed_name):
    """Reading the fixtures (packed by fixtures/make_fixtures.py's own numpy packer) gives WeightQuant's codes."""
    fixture_dir = FIXTURES / packed_name
    master = open_checkpoint(FIXTURES / fixture_dir.name.replace("packed", "master"))
    packed = open_checkpoint(fixture_dir)
    for name in master.config.quantized_linear_names():
        w = master.tensors[name].load().torch()
        want = torch.sign(bitnet.WeightQuant.forward(None, w.float())).to(torch.int8)
        got = torch.from_numpy(packed.tensors[name].load().codes)
        assert int((got != want).sum()) == 0, name


@pytest.mark.parametrize("master_name", MASTERS)
def test_pack_writes_weightquants_codes_for_every_master(master_name, tmp_path):
    fixture_dir = FIXTURES / master_name
    out = tmp_path / "p"
    assert cli("pack", fixture_dir, out).returncode == 0
    packed = open_checkpoint(out)
    master = open_checkpoint(fixture_dir)
    for name in master.config.quantized_linear_names():
        want = torch.sign(bitnet.WeightQuant.forward(None, master.tensors[name].load().torch().float()))
        assert int((torch.from_numpy(packed.tensors[name].load().codes) != want.to(torch.int8)).sum()) == 0, name


def test_activations_are_quantized_as_actquant_does():
    from bitconvert.runtime import quantize_activations

    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 5, 64, generator=g)
    q, s = quantize_activations(x)
    assert torch.equal(q.float() / s, bitnet.ActQuant.forward(None, x))
