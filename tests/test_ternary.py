"""The pure ternary core (numpy) against transformers' own functions, torch's arithmetic and the layout facts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from bitconvert.dtypes import Dense, dtype_name
from bitconvert.ternary import (
    LinearClass,
    Scale,
    TernaryWeight,
    absmean_quantize,
    first_invalid_code,
    pack_codes,
    quantize,
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
    codes, mean_abs = absmean_quantize(Dense.from_torch(w))
    assert mean_abs.item() == 0.25
    assert torch.equal(torch.from_numpy(codes), weightquant_codes(w))
    # round half to even: +-0.5 -> 0, +-1.5 -> +-2 -> clamped to +-1
    assert np.all(codes[((w * 4).abs() == 0.5).numpy()] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4, 7), (128, 96), (640, 256)])
def test_codes_equal_weightquant_on_random(dtype, shape):
    g = torch.Generator().manual_seed(shape[0])
    w = (torch.randn(*shape, generator=g) * 0.02).to(dtype)
    codes, _ = absmean_quantize(Dense.from_torch(w))
    assert int((torch.from_numpy(codes) != weightquant_codes(w)).sum()) == 0


def test_all_zero_weight_uses_floor():
    codes, mean_abs = absmean_quantize(Dense.of(np.zeros((8, 8), dtype=np.float32)))
    assert mean_abs.item() == pytest.approx(1e-5) and not codes.any()
    assert mean_abs == torch.zeros(8, 8).abs().mean().clamp(min=1e-5).item()  # torch's float32 floor


@pytest.mark.parametrize("rows,cols", [(4, 1), (8, 3), (64, 40), (2560, 16)])
def test_pack_roundtrip_and_layout(rows, cols):
    g = torch.Generator().manual_seed(rows + cols)
    codes = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8).numpy()
    before = codes.copy()
    packed = pack_codes(codes)
    assert np.array_equal(codes, before)  # input untouched
    assert packed.dtype == np.uint8 and packed.shape == (rows // 4, cols)
    p = rows // 4
    r, c = rows // 2 % p, cols - 1  # spot-check the bit layout from its definition
    expect = sum((int(codes[r + i * p, c]) + 1) << (2 * i) for i in range(4))
    assert int(packed[r, c]) == expect
    assert np.array_equal(unpack_codes(packed), codes)
    assert torch.equal(torch.from_numpy(packed), bitnet.pack_weights(torch.from_numpy(codes).to(torch.int32)))


def test_unpack_matches_transformers_unpack():
    g = torch.Generator().manual_seed(3)
    packed = pack_codes(torch.randint(-1, 2, (32, 24), generator=g, dtype=torch.int8).numpy())
    theirs = bitnet.unpack_weights(torch.from_numpy(packed.copy()), dtype=torch.float32)
    assert torch.equal(torch.from_numpy(unpack_codes(packed)).float(), theirs)


def test_pack_rejects_rows_not_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        pack_codes(np.zeros((6, 4), dtype=np.int8))


def test_first_invalid_code_finds_code_three():
    packed = pack_codes(np.zeros((16, 5), dtype=np.int8))
    assert first_invalid_code(packed) is None
    packed[2, 3] |= 0b11 << 4  # plane 2 -> unpacked row 2 + 2*4 = 10
    assert first_invalid_code(packed) == (10, 3)


@pytest.mark.parametrize("linear_class", list(LinearClass))
def test_scale_conventions(linear_class):
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 16, generator=g) * 0.02
    tw = quantize(Dense.from_torch(w), linear_class, "F32")
    mean_abs = w.abs().mean()
    assert tw.scale.dtype_name == "F32"
    if linear_class is LinearClass.AUTOBITLINEAR:
        assert tw.scale.item() == mean_abs.item()
    else:
        assert tw.scale.item() == (1.0 / mean_abs).item()
    assert tw.scale.multiplier == pytest.approx(mean_abs.item(), rel=1e-6)
    other = tw.scale.to(LinearClass.AUTOBITLINEAR if linear_class is LinearClass.BITLINEAR else LinearClass.BITLINEAR,
                        "F32")
    assert other.multiplier == pytest.approx(tw.scale.multiplier, rel=1e-6)
    # re-expressed as torch does it: 1 / the stored value in float64, rounded once to float32
    assert other.item() == (1.0 / torch.tensor([tw.scale.item()], dtype=torch.float64)).float().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_recover_ternary_is_exact(dtype):
    g = torch.Generator().manual_seed(7)
    codes = torch.randint(-1, 2, (16, 12), generator=g, dtype=torch.int8)
    stored = torch.tensor([0.0123], dtype=torch.bfloat16)
    scale = Scale.of(0.0123, LinearClass.AUTOBITLINEAR, "BF16")
    assert scale.item() == stored.item()  # rounded as torch rounds
    w = TernaryWeight(codes.numpy(), scale).dequantize(dtype_name(dtype))
    assert torch.equal(w.torch(), codes.to(dtype) * stored.to(dtype))  # torch's codes x magnitude
    found = recover_ternary(w)
    assert found is not None
    assert torch.equal(torch.from_numpy(found.codes), codes)
    assert found.scale.to(LinearClass.AUTOBITLINEAR, "BF16").item() == stored.item()
    # requantizing instead would shrink the scale by the fraction of non-zero codes
    _, mean_abs = absmean_quantize(w)
    assert mean_abs.item() < found.scale.multiplier


def test_recover_rejects_non_ternary_and_zero():
    assert recover_ternary(Dense.of(np.array([[0.1, -0.1], [0.2, 0.0]], dtype=np.float32))) is None
    assert recover_ternary(Dense.of(np.zeros((4, 4), dtype=np.float32))) is None


def test_activation_quant_matches_transformers():
    from bitconvert.runtime import quantize_activations

    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 5, 64, generator=g)
    q, s = quantize_activations(x)
    assert torch.equal(q.float() / s, bitnet.ActQuant.forward(None, x))


# --- the ternary package without torch ---------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)


def test_the_ternary_package_does_not_import_torch():
    r = _python("import bitconvert.ternary, bitconvert.ternary.recipes; import sys; assert 'torch' not in sys.modules")
    assert r.returncode == 0, r.stderr


SUMMATION_ORDER = """
import json, sys
import bitconvert.ternary
from bitconvert.ternary.fast.summation import calibrated_lanes, summation_order
order = summation_order()
assert 'torch' not in sys.modules
import torch
threads = torch.get_num_threads()
print(json.dumps([order, [threads, calibrated_lanes(threads)], summation_order()]))
"""


def test_summation_order_without_torch_is_torchs():
    """Quantizing without torch sums mean|W| in the order torch would use here: its starting thread
    count and its build's SIMD width (calibrated against torch once it is loaded)."""
    import json

    r = _python(SUMMATION_ORDER)
    assert r.returncode == 0, r.stderr
    without, calibrated, with_torch = json.loads(r.stdout)
    assert calibrated[1] is not None
    assert without == calibrated == with_torch
