"""A stored scale means what its linear class says (autobitlinear: mean|W|; bitlinear: 1/mean|W|), is
re-expressed with one rounding as torch's ``.to()`` does, and travels in records of exact bytes;
floats that already are codes x one magnitude give that magnitude back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitconvert.dtypes import Dense, dtype_name
from bitconvert.errors import CheckpointError
from bitconvert.ternary import LinearClass, Scale, TernaryWeight, absmean_quantize, quantize, recover_ternary
from bitconvert.ternary.records import decode_record, encode_record


@pytest.mark.parametrize("linear_class", list(LinearClass))
def test_each_linear_class_stores_its_own_scale_convention(linear_class):
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
def test_floats_that_are_codes_times_a_magnitude_recover_it_exactly(dtype):
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


def test_floats_that_are_not_ternary_or_all_zero_are_not_recovered():
    assert recover_ternary(Dense.of(np.array([[0.1, -0.1], [0.2, 0.0]], dtype=np.float32))) is None
    assert recover_ternary(Dense.of(np.zeros((4, 4), dtype=np.float32))) is None


@pytest.mark.parametrize("cls", list(LinearClass))
@pytest.mark.parametrize("src", ["F64", "F32", "BF16", "F16"])
@pytest.mark.parametrize("dst", ["F64", "F32", "BF16", "F16"])
def test_a_scales_magnitude_in_another_dtype_rounds_as_torch_does(cls, src, dst):
    from bitconvert.dtypes import torch_dtype

    gen = torch.Generator().manual_seed(7)
    values = torch.exp(torch.randn(400, generator=gen, dtype=torch.float64) * 6)
    # ties of the 16-bit types nudged up by less than float32 resolves: rounding through float32
    # (as torch does) lands on the tie and goes to even, rounding directly would go up
    ties = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11, 1 + 3 * 2**-11], dtype=torch.float64)
    odd = torch.arange(1, 200, 2, dtype=torch.float64)
    values = torch.cat([values, ties, ties + 2**-40, (1 + odd * 2**-9) * 3.0, 1 / ties,
                        torch.tensor([65504.0, 65520.0, 1e-8, 3e38, 1e300, 5e-324])])  # fmt: skip
    stored = values.to(torch_dtype(src))
    word = {"F64": torch.int64, "F32": torch.int32, "BF16": torch.int16, "F16": torch.int16}[dst]
    mask = (1 << (8 * torch.empty(0, dtype=word).element_size())) - 1
    for v in stored:
        data = v.reshape(1).view(torch.uint8).numpy().tobytes()
        # mean|W| in float64 (the stored value, or its reciprocal), then one torch cast into dst
        mean = v.double() if cls is LinearClass.AUTOBITLINEAR else 1.0 / v.double()
        expected = mean.to(torch_dtype(dst)).reshape(1).view(word).item() & mask
        assert Scale(src, data, cls).magnitude_bits(dst) == expected, (float(v), cls, src, dst)


def test_a_scale_record_round_trips_and_a_wrong_size_is_refused():
    scale = Scale.of(0.0123, LinearClass.AUTOBITLINEAR, "BF16")
    item = encode_record(scale)
    assert decode_record(item, "f", "w").scale == scale
    with pytest.raises(CheckpointError, match=r"scale has 1 bytes, a BF16 value has 2"):
        decode_record([item[0], item[1], item[2][:2]], "f", "w")
    with pytest.raises(CheckpointError, match="a list of 3 or 5 strings"):
        decode_record({"x": 1}, "f", "w")
