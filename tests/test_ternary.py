"""The pure ternary core against transformers' own functions and the layout facts."""

from __future__ import annotations

import pytest
import torch

from bitconvert.ternary import (
    LinearClass,
    TernaryScale,
    TernaryWeight,
    absmean_quantize,
    first_invalid_code,
    pack_codes,
    quantize,
    quantize_activations,
    recover_ternary,
    unpack_codes,
)

bitnet = pytest.importorskip("transformers.integrations.bitnet")


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
def test_codes_equal_weightquant_on_ties(seed):
    w = tied_tensor(64, 48, seed)
    assert w.abs().mean().item() == 0.25
    ties = ((w * 4).abs() == 0.5).sum().item()
    assert ties > 100  # the test is about ties; make sure there are many
    codes, mean_abs = absmean_quantize(w)
    assert mean_abs.item() == 0.25
    assert torch.equal(codes, weightquant_codes(w))
    # round half to even: +-0.5 -> 0, +-1.5 -> +-2 -> clamped to +-1
    assert torch.all(codes[(w * 4).abs() == 0.5] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 7), (128, 96), (640, 256)])
def test_codes_equal_weightquant_on_random(dtype, shape):
    g = torch.Generator().manual_seed(shape[0])
    w = (torch.randn(*shape, generator=g) * 0.02).to(dtype)
    codes, _ = absmean_quantize(w)
    assert int((codes != weightquant_codes(w)).sum()) == 0


def test_all_zero_weight_uses_floor():
    codes, mean_abs = absmean_quantize(torch.zeros(8, 8))
    assert mean_abs.item() == pytest.approx(1e-5) and not codes.any()


@pytest.mark.parametrize("rows,cols", [(4, 1), (8, 3), (64, 40), (2560, 16)])
def test_pack_roundtrip_and_layout(rows, cols):
    g = torch.Generator().manual_seed(rows + cols)
    codes = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
    before = codes.clone()
    packed = pack_codes(codes)
    assert torch.equal(codes, before)  # input untouched
    assert packed.dtype == torch.uint8 and packed.shape == (rows // 4, cols)
    p = rows // 4
    r, c = rows // 2 % p, cols - 1  # spot-check the bit layout from its definition
    expect = sum((int(codes[r + i * p, c]) + 1) << (2 * i) for i in range(4))
    assert int(packed[r, c]) == expect
    assert torch.equal(unpack_codes(packed), codes)
    assert torch.equal(packed, bitnet.pack_weights(codes.clone().to(torch.int32)))


def test_unpack_matches_transformers_unpack():
    g = torch.Generator().manual_seed(3)
    packed = pack_codes(torch.randint(-1, 2, (32, 24), generator=g, dtype=torch.int8))
    theirs = bitnet.unpack_weights(packed.clone(), dtype=torch.float32)
    assert torch.equal(unpack_codes(packed).float(), theirs)


def test_pack_rejects_rows_not_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_codes(torch.zeros(6, 4, dtype=torch.int8))


def test_first_invalid_code_finds_code_three():
    packed = pack_codes(torch.zeros(16, 5, dtype=torch.int8))
    assert first_invalid_code(packed) is None
    packed[2, 3] |= 0b11 << 4  # plane 2 -> unpacked row 2 + 2*4 = 10
    assert first_invalid_code(packed) == (10, 3)


@pytest.mark.parametrize("linear_class", list(LinearClass))
def test_scale_conventions(linear_class):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 16, generator=g) * 0.02
    tw = quantize(w, linear_class, torch.float32)
    mean_abs = w.abs().mean()
    if linear_class is LinearClass.AUTOBITLINEAR:
        assert tw.scale.value.item() == mean_abs.item()
    else:
        assert tw.scale.value.item() == (1.0 / mean_abs).item()
    assert tw.scale.multiplier == pytest.approx(mean_abs.item(), rel=1e-6)
    other = tw.scale.to(LinearClass.AUTOBITLINEAR if linear_class is LinearClass.BITLINEAR else LinearClass.BITLINEAR,
                        torch.float32)
    assert other.multiplier == pytest.approx(tw.scale.multiplier, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_recover_ternary_is_exact(dtype):
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(-1, 2, (16, 12), generator=g, dtype=torch.int8)
    scale = TernaryScale(torch.tensor([0.0123], dtype=torch.bfloat16), LinearClass.AUTOBITLINEAR)
    w = TernaryWeight(codes, scale).dequantize(dtype)
    found = recover_ternary(w)
    assert found is not None
    assert torch.equal(found[0], codes)
    assert found[1].to(torch.bfloat16).item() == scale.value.item()
    # requantizing instead would shrink the scale by the fraction of non-zero codes
    _, mean_abs = absmean_quantize(w)
    assert mean_abs.item() < found[1].float().item()


def test_recover_rejects_non_ternary_and_zero():
    assert recover_ternary(torch.tensor([[0.1, -0.1], [0.2, 0.0]])) is None
    assert recover_ternary(torch.zeros(4, 4)) is None


def test_activation_quant_matches_transformers():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 5, 64, generator=g)
    q, s = quantize_activations(x)
    assert torch.equal(q.float() / s, bitnet.ActQuant.forward(None, x))
