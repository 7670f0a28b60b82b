"""The chunked quantize+pack path gives transformers' codes and scales bit for bit.

mean|W| is summed in chunks in torch's own order (bitconvert/ternary/fast/summation.py) and codes come from
comparing bf16 bit patterns with a threshold; both are checked here against torch's whole-tensor
float32 mean and transformers' WeightQuant + pack_weights, on real 2B-4T shapes, at several
thread counts, on exact +-0.5 ties and on the shipped masters. Every test runs twice: with the
numba-compiled loops (bitconvert/ternary/fast/jit.py) and with the numpy definition they follow.
"""

from __future__ import annotations

import random

import pytest
import torch
from safetensors import safe_open

from bitconvert.dtypes import Dense
from bitconvert.ternary import LinearClass, NonFiniteWeight, pack_codes
from bitconvert.ternary import absmean_quantize as _absmean_quantize
from bitconvert.ternary import quantize as _quantize
from bitconvert.ternary import quantize_packed as _quantize_packed
from bitconvert.ternary.fast import jit
from bitconvert.ternary.fast.summation import calibrated_lanes
from bitconvert.ternary.quantize import mean_abs as _mean_abs
from tests.conftest import FIXTURES

bitnet = pytest.importorskip("transformers.integrations.bitnet", reason="transformers (test extra) is the oracle")

#: every linear shape of microsoft/bitnet-b1.58-2B-4T (q/o, k/v, gate/up, down)
SHAPES_2B4T = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)]


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def path(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(jit, "kernels", lambda values=None: None)
    else:  # the compiled loops on every size here, small ones included (their leftovers differ)
        monkeypatch.setattr(jit, "MIN_VALUES", 0)
    return request.param


# The numpy core takes Dense values; these take torch tensors (converted without a copy) and give
# torch tensors back, so every comparison below is with torch's and transformers' own results.


def mean_abs(w: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_mean_abs(Dense.from_torch(w)))


def absmean_quantize(w: torch.Tensor):
    codes, m = _absmean_quantize(Dense.from_torch(w))
    return torch.from_numpy(codes), torch.tensor(m)


def quantize(w: torch.Tensor, linear_class: LinearClass, scale_dtype: str):
    return _quantize(Dense.from_torch(w), linear_class, scale_dtype)


def quantize_packed(w: torch.Tensor, linear_class: LinearClass, scale_dtype: str):
    packed, scale = _quantize_packed(Dense.from_torch(w), linear_class, scale_dtype)
    return torch.from_numpy(packed), scale


def test_the_compiled_path_is_installed(path):
    # numba is a dependency: a machine without it would only test (and run) the slow path
    assert (jit.kernels() is not None) == (path == "compiled")


def transformers_packed(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' own recipe: WeightQuant's fp32 s, codes = sign of its output, pack_weights."""
    wf = w.float()
    s = 1.0 / wf.abs().mean().clamp(min=1e-5)
    codes = torch.sign(bitnet.WeightQuant.forward(None, wf)).to(torch.int32)
    return bitnet.pack_weights(codes), s


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_this_torch_builds_summation_order_is_reproduced(threads):
    # if this fails, quantization still is exact (torch's own mean is used) but not chunked
    assert calibrated_lanes(threads) is not None


@pytest.mark.parametrize("shape", SHAPES_2B4T)
@pytest.mark.parametrize("scale", [0.02, 3e-6])
def test_real_shapes_match_transformers(threads, shape, scale):
    g = torch.Generator().manual_seed(hash((shape, scale, threads)) % 2**31)
    w = (torch.randn(shape, generator=g) * scale).bfloat16()
    assert mean_abs(w).item() == w.float().abs().mean().item()
    packed, s = transformers_packed(w)
    ours, scale_b = quantize_packed(w, LinearClass.BITLINEAR, "F32")
    assert scale_b.item() == s.item()
    assert torch.equal(ours, packed.to(torch.uint8))


def test_random_sizes_give_torchs_mean(threads):
    rng = random.Random(threads)
    g = torch.Generator().manual_seed(threads)
    for _ in range(40):
        n = rng.choice([rng.randint(1, 3000), rng.randint(1, 400_000), 32768 * threads + rng.randint(-40, 40)])
        w = (torch.randn(n, generator=g) * rng.choice([1.0, 0.02, 40.0])).bfloat16()
        assert mean_abs(w).item() == w.float().abs().mean().item(), n


def test_exact_ties_round_half_to_even():
    # mean|W| = 2/8 exactly, so s = 4: 1/8 -> 0.5 (-> 0), 3/8 -> 1.5 (-> 2 -> 1), 2/8 -> 1, 4/8 -> 2 -> 1
    tied = torch.tensor([[1, -1, 3, -3, 0, 2, -2, 4] * 12] * 4).float() / 8
    assert tied.abs().mean().item() == 0.25
    ours, scale = quantize_packed(tied.bfloat16(), LinearClass.BITLINEAR, "F32")
    codes = torch.tensor([[0, 0, 1, -1, 0, 1, -1, 1] * 12] * 4, dtype=torch.int8)
    assert scale.item() == 4.0 and torch.equal(ours, torch.from_numpy(pack_codes(codes.numpy())))
    packed, s = transformers_packed(tied.bfloat16())
    assert s.item() == 4.0 and torch.equal(ours, packed.to(torch.uint8))


@pytest.mark.parametrize("seed", range(3))
def test_multiples_of_an_eighth_match_transformers(seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randint(-4, 5, (256, 96), generator=g).float() / 8).bfloat16()
    ours, scale = quantize_packed(w, LinearClass.BITLINEAR, "F32")
    packed, s = transformers_packed(w)
    assert scale.item() == s.item() and torch.equal(ours, packed.to(torch.uint8))


def test_non_finite_is_refused_and_other_dtypes_follow_the_recipe():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(16, 32, generator=g) * 0.02).bfloat16()
    w[3, 4] = float("inf")
    for quantizer in (absmean_quantize, lambda t: quantize_packed(t, LinearClass.AUTOBITLINEAR, "F32")):
        with pytest.raises(NonFiniteWeight, match=r"non-finite value inf at index \[3, 4\]"):
            quantizer(w)
    for dtype in (torch.float32, torch.float16):
        x = (torch.randn(64, 48, generator=g) * 0.02).to(dtype)
        ours, scale = quantize_packed(x, LinearClass.BITLINEAR, "F32")
        packed, s = transformers_packed(x)
        assert scale.item() == s.item() and torch.equal(ours, packed.to(torch.uint8))


@pytest.mark.parametrize("master", ["bitnet-2b4t-master", "1bitllm-master", "llama-master"])
def test_shipped_masters_quantize_as_transformers_does(master):
    with safe_open(FIXTURES / master / "model.safetensors", "pt") as f:
        for name in f.keys():
            if not name.endswith("proj.weight"):
                continue
            w = f.get_tensor(name)
            tw = quantize(w, LinearClass.AUTOBITLINEAR, "F32")
            assert tw.scale.item() == w.float().abs().mean().clamp(min=1e-5).item(), name
            packed, _ = transformers_packed(w)
            assert torch.equal(torch.from_numpy(pack_codes(tw.codes)), packed.to(torch.uint8)), name
            ours, scale = quantize_packed(w, LinearClass.AUTOBITLINEAR, "F32")
            assert torch.equal(ours, packed.to(torch.uint8)) and scale.same_as(tw.scale), name


@pytest.mark.parametrize("total,parts,align", [(0, 2, 1), (1, 2, 1), (10, 3, 1), (10, 4, 4), (65537, 2, 1 << 16), (7, 16, 2)])
def test_spans_cut_every_element_once_at_aligned_cuts(total, parts, align):
    from bitconvert.ternary.fast.workers import spans

    got = spans(total, parts, align)
    assert [i for a, b in got for i in range(a, b)] == list(range(total))
    assert len(got) <= parts and all(a % align == 0 for a, _ in got)


def test_split_map_keeps_order_and_raises_a_workers_error():
    from bitconvert.ternary.fast.workers import split_map

    assert split_map(lambda x: x * x, list(range(7))) == [x * x for x in range(7)]

    def boom(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        split_map(boom, list(range(5)))


def test_compiled_loops_that_disagree_with_numpy_are_not_used(monkeypatch):
    from types import SimpleNamespace

    from bitconvert.ternary.fast import summation as torchsum

    wrong = SimpleNamespace(block_abs_sums=lambda bits, first, blocks, step, cols, out, *scratch: out.fill(1.0))
    monkeypatch.setattr(jit, "kernels", lambda values=None: wrong)
    monkeypatch.setattr(torchsum, "_compiled_agrees", {})
    w = (torch.randn(2 << 20, generator=torch.Generator().manual_seed(5)) * 0.02).bfloat16()
    assert mean_abs(w).item() == w.float().abs().mean().item()
    assert torchsum._compiled_for(w.numel(), calibrated_lanes(torch.get_num_threads())) is None
