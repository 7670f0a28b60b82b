"""Kernels of bitconvert.kernels against the torch reference built from bitconvert.ternary, and the runtime on them.

Triton decides once, when it is first imported, whether it compiles or interprets; this module
asks for the interpreter before anything can import it, so the kernels run on CPU tensors (and
on CUDA tensors, if any, through the interpreter too). To test the compiled kernels on a GPU
machine, run ``TRITON_INTERPRET=0 pytest tests/runtime/test_ternary_kernels.py``: the CPU kernel tests then skip
and the same tests run on CUDA. ``test_kernels_compile_for_hopper`` compiles for sm_90 without a
GPU in a separate process.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything below can import triton

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from bitconvert import kernels
from bitconvert.kernels import linear as linear_module
from bitconvert.kernels import torch_path
from bitconvert.kernels import unpack as unpack_module
from bitconvert.runtime import quantize_activations
from bitconvert.ternary import LinearClass
from bitconvert.ternary import pack_codes as pack_numpy
from bitconvert.ternary import unpack_codes as unpack_numpy


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """bitconvert.ternary's (numpy) packing of torch codes, as a torch tensor."""
    return torch.from_numpy(pack_numpy(codes.numpy()))


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """bitconvert.ternary's (numpy) unpacking of torch bytes (any device), as a CPU torch tensor."""
    return torch.from_numpy(unpack_numpy(packed.cpu().numpy()))

NO_TRITON = not kernels.triton_available()
needs_triton = pytest.mark.skipif(NO_TRITON, reason=kernels.triton_unavailable_reason() or "")


def _cpu_kernels_skip_reason():
    if kernels.uses_triton("cpu"):
        return None
    return kernels.triton_unavailable_reason() or (
        "Triton was imported without TRITON_INTERPRET=1, so CPU tensors take the torch path"
    )


CPU_SKIP_REASON = _cpu_kernels_skip_reason()
cpu_kernels = pytest.mark.skipif(CPU_SKIP_REASON is not None, reason=f"CPU kernel tests: {CPU_SKIP_REASON}")
DEVICES = [pytest.param("cpu", marks=cpu_kernels)] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def kernels_only(monkeypatch):
    """Make any use of the torch fallbacks fail, so a passing test really ran the kernels."""

    def refuse(*args, **kwargs):
        raise AssertionError("the torch fallback ran where a Triton kernel was expected")

    monkeypatch.setattr(unpack_module, "unpack_ternary_torch", refuse)
    monkeypatch.setattr(linear_module, "ternary_linear_torch", refuse)


def random_codes(rows, cols, generator):
    return torch.randint(-1, 2, (rows, cols), generator=generator, dtype=torch.int8)


def reference_linear(x, packed, scale, linear_class):
    """The W1.58A8 semantics, spelled out with bitconvert.ternary (all on CPU, in fp32)."""
    q, act_scale = quantize_activations(x.cpu())
    y = (q.float() @ unpack_codes(packed.cpu()).float().T) / act_scale
    weight_scale = scale.cpu().float()
    y = y * weight_scale if linear_class is LinearClass.AUTOBITLINEAR else y / weight_scale
    return y.to(x.dtype)


def assert_linear_close(out, ref):
    """Agreement to fp32 rounding; a bf16 result may differ by its own last step at most."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if ref.dtype == torch.float32 else {"rtol": 2**-7, "atol": 1e-6}
    torch.testing.assert_close(out.cpu(), ref, **tolerance)


def make_layer(rows, cols, device, seed=0, scale_value=0.37):
    generator = torch.Generator().manual_seed(seed)
    packed = pack_codes(random_codes(rows, cols, generator)).to(device)
    scale = torch.tensor([scale_value], dtype=torch.bfloat16, device=device)
    return packed, scale, generator


# ---- unpack ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int8, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed_rows", [1, 16, 33])  # R = 4, 64, 132
@pytest.mark.parametrize("cols", [32, 96, 256])
def test_unpack_is_bit_exact(device, dtype, packed_rows, cols):
    generator = torch.Generator().manual_seed(packed_rows * 1000 + cols)
    # Every byte value, including fields holding the invalid code 3 (which both decode as 2).
    packed = torch.randint(0, 256, (packed_rows, cols), generator=generator, dtype=torch.uint8)
    out = kernels.unpack_ternary(packed.to(device), dtype)
    assert out.dtype == dtype and out.shape == (4 * packed_rows, cols) and out.device.type == device
    assert torch.equal(out.cpu(), unpack_codes(packed).to(dtype))


@cpu_kernels
@pytest.mark.usefixtures("kernels_only")
def test_unpack_accepts_a_prepared_weight_and_non_contiguous_input():
    packed = torch.randint(0, 256, (64, 40), dtype=torch.uint8)[:, ::2]
    assert not packed.is_contiguous()
    assert torch.equal(kernels.unpack_ternary(packed), unpack_codes(packed))
    assert torch.equal(kernels.unpack_ternary(kernels.prepare_weight(packed)), unpack_codes(packed))


def test_unpack_rejects_bad_arguments():
    with pytest.raises(ValueError):
        kernels.unpack_ternary(torch.zeros(4, 4, dtype=torch.uint8), torch.float32)
    with pytest.raises(ValueError):
        kernels.unpack_ternary(torch.zeros(4, 4, dtype=torch.int8))


# ---- linear ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [4, 64, 132])
@pytest.mark.parametrize("cols", [32, 96, 256])
@pytest.mark.parametrize("tokens", [1, 3, 8, 33])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_ternary_linear_matches_reference(device, rows, cols, tokens, x_dtype):
    packed, scale, generator = make_layer(rows, cols, device, seed=rows + cols + tokens)
    x = (torch.randn(tokens, cols, generator=generator) * 3).to(x_dtype).to(device)
    weight = kernels.prepare_weight(packed)
    for linear_class in LinearClass:
        out = kernels.ternary_linear(x, weight, scale, linear_class)
        assert out.device.type == device
        assert_linear_close(out, reference_linear(x, packed, scale, linear_class))


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 3, 8, 33])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_both_paths_for_every_token_count(device, tokens, x_dtype):
    """GEMV and GEMM each handle any M; small blocks make masks and several K steps happen."""
    from bitconvert.kernels import triton_linear

    rows, cols = 132, 96
    packed, scale, generator = make_layer(rows, cols, device, seed=tokens)
    x = (torch.randn(tokens, cols, generator=generator) * 2).to(x_dtype).to(device)
    weight = kernels.prepare_weight(packed)
    gemv_blocks = (1 << (tokens - 1).bit_length(), 8, 64)
    gemm_blocks = (16, 16, 32, 4)
    for linear_class in LinearClass:
        ref = reference_linear(x, packed, scale, linear_class)
        divide = linear_class is LinearClass.BITLINEAR
        for launch, blocks in ((triton_linear.launch_gemv, gemv_blocks), (triton_linear.launch_gemm, gemm_blocks)):
            out = torch.full((tokens, rows), float("nan"), dtype=x_dtype, device=device)
            launch(x, weight, scale, divide, out, blocks=blocks)
            assert_linear_close(out, ref)


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
def test_results_are_bit_identical_to_the_reference(device):
    # More than the API promises (fp32 tolerance), but the kernels round every step like torch;
    # a mismatch here points at a rounding difference before it grows into a visible error.
    packed, scale, generator = make_layer(64, 256, device, seed=7)
    for tokens in (1, 33):
        x = (torch.randn(tokens, 256, generator=generator) * 5).to(torch.bfloat16).to(device)
        for linear_class in LinearClass:
            out = kernels.ternary_linear(x, packed, scale, linear_class)
            assert torch.equal(out.cpu(), reference_linear(x, packed, scale, linear_class))


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 33])
def test_activation_rounding_ties_go_to_even(device, tokens):
    # max|x| = 127 makes the activation scale exactly 1, so x itself holds the .5 ties.
    cols = 32
    x = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] * (cols // 8)).repeat(tokens, 1).to(device)
    packed, scale, _ = make_layer(8, cols, device, seed=3)
    ref = reference_linear(x, packed, scale, LinearClass.AUTOBITLINEAR)
    assert torch.equal(kernels.ternary_linear(x, packed, scale, LinearClass.AUTOBITLINEAR).cpu(), ref)


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 33])
def test_a_single_wrong_code_is_detected(device, tokens):
    """The comparison is tight enough to see one flipped code among thousands."""
    rows, cols = 64, 256
    packed, scale, generator = make_layer(rows, cols, device, seed=11)
    codes = unpack_codes(packed.cpu())
    codes[37, 200] = 1 if codes[37, 200] != 1 else -1
    x = torch.randn(tokens, cols, generator=generator)
    x[:, 200] = 1.0  # a sizeable activation where the code flips
    out = kernels.ternary_linear(x.to(device), packed, scale, LinearClass.BITLINEAR)
    assert_linear_close(out, reference_linear(x, packed, scale, LinearClass.BITLINEAR))
    with pytest.raises(AssertionError):
        assert_linear_close(out, reference_linear(x, pack_codes(codes), scale, LinearClass.BITLINEAR))


@pytest.mark.usefixtures("kernels_only")
@pytest.mark.parametrize("device", DEVICES)
def test_leading_dimensions_and_empty_batches(device):
    packed, scale, generator = make_layer(64, 96, device)
    x = torch.randn(2, 3, 96, generator=generator).to(device)
    out = kernels.ternary_linear(x, packed, scale, LinearClass.AUTOBITLINEAR)
    assert out.shape == (2, 3, 64)
    ref = reference_linear(x.reshape(6, 96), packed, scale, LinearClass.AUTOBITLINEAR)
    assert_linear_close(out.reshape(6, 64), ref)
    assert kernels.ternary_linear(torch.empty(0, 96, device=device), packed, scale, "bitlinear").shape == (0, 64)


@needs_triton
@pytest.mark.parametrize("device", DEVICES)
def test_dispatch_uses_gemv_up_to_the_threshold(monkeypatch, device):
    from bitconvert.kernels import triton_linear

    calls = []
    monkeypatch.setattr(triton_linear, "launch_gemv", lambda *a, **k: calls.append("gemv"))
    monkeypatch.setattr(triton_linear, "launch_gemm", lambda *a, **k: calls.append("gemm"))
    packed, scale, _ = make_layer(8, 32, device)
    for tokens in (1, kernels.GEMV_MAX_TOKENS, kernels.GEMV_MAX_TOKENS + 1):
        kernels.ternary_linear(torch.randn(tokens, 32, device=device), packed, scale, "bitlinear")
    assert calls == ["gemv", "gemv", "gemm"]


# ---- torch fallback, API ------------------------------------------------------------------


def test_the_torch_fallback_matches_the_reference(monkeypatch):
    monkeypatch.setattr(linear_module, "uses_triton", lambda device: False)
    monkeypatch.setattr(unpack_module, "uses_triton", lambda device: False)
    packed, scale, generator = make_layer(132, 96, "cpu", seed=5)
    for dtype in (torch.int8, torch.bfloat16, torch.float16):
        assert torch.equal(kernels.unpack_ternary(packed, dtype), unpack_codes(packed).to(dtype))
    for tokens in (1, 33):
        x = torch.randn(2, tokens, 96, generator=generator).to(torch.bfloat16)
        for linear_class in LinearClass:
            out = kernels.ternary_linear(x, packed, scale, linear_class)
            ref = reference_linear(x.reshape(-1, 96), packed, scale, linear_class)
            assert torch.equal(out.reshape(-1, 132), ref)
    assert torch.equal(torch_path.unpack_ternary_torch(packed, torch.int8), unpack_codes(packed))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_numpy_bytes_as_the_checkpoint_gives_them(device):
    """Packed bytes straight from bitconvert.ternary (numpy) go in where a torch tensor does."""
    codes = np.random.default_rng(4).integers(-1, 2, (64, 96), dtype=np.int8)
    packed = pack_numpy(codes)
    weight = kernels.prepare_weight(packed, validate=True, device=device)
    assert weight.packed.device.type == device and torch.equal(weight.packed.cpu(), torch.from_numpy(packed))
    assert np.array_equal(kernels.unpack_ternary(packed).numpy(), codes)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(4)).to(device)
    scale = torch.tensor([0.37], dtype=torch.bfloat16, device=device)
    out = kernels.ternary_linear(x, packed, scale, LinearClass.BITLINEAR)
    assert out.device.type == device
    assert torch.equal(out.cpu(), kernels.ternary_linear(x, weight, scale, LinearClass.BITLINEAR).cpu())
    assert_linear_close(out, reference_linear(x, torch.from_numpy(packed), scale, LinearClass.BITLINEAR))
    read_only = packed.copy()
    read_only.flags.writeable = False  # a reader's mapped bytes
    assert torch.equal(kernels.prepare_weight(read_only).packed, torch.from_numpy(packed))
    with pytest.raises(ValueError):
        kernels.prepare_weight(codes)


def test_the_kernels_run_where_triton_can():
    from bitconvert.kernels.backend import triton_interpreting

    assert kernels.uses_triton("cpu") == triton_interpreting()
    assert kernels.uses_triton("meta") is False
    if torch.cuda.is_available():
        assert kernels.uses_triton("cuda") == kernels.triton_available()


def test_prepare_weight_validates_codes_and_reports_the_layout():
    packed, _, _ = make_layer(64, 32, "cpu")
    weight = kernels.prepare_weight(packed, validate=True)
    assert (weight.out_features, weight.in_features, weight.rows_per_plane) == (64, 32, 16)
    assert kernels.prepare_weight(weight) is weight
    invalid = packed.clone()
    invalid[5, 7] |= 0b11 << 4  # plane 2: unpacked row 5 + 2 * 16
    with pytest.raises(ValueError, match=r"\(37, 7\)"):
        kernels.prepare_weight(invalid, validate=True)
    with pytest.raises(ValueError):
        kernels.prepare_weight(packed.to(torch.int8))


def test_ternary_linear_rejects_bad_arguments():
    packed, scale, _ = make_layer(8, 32, "cpu")
    with pytest.raises(ValueError, match="input features"):
        kernels.ternary_linear(torch.randn(2, 31), packed, scale, "bitlinear")
    with pytest.raises(ValueError, match="one-element"):
        kernels.ternary_linear(torch.randn(2, 32), packed, torch.ones(2), "bitlinear")
    with pytest.raises(ValueError, match="floating-point"):
        kernels.ternary_linear(torch.ones(2, 32, dtype=torch.int32), packed, scale, "bitlinear")
    with pytest.raises(ValueError):
        kernels.ternary_linear(torch.randn(2, 32), packed, scale, "linear")


# ---- the kernels compile for a real GPU -----------------------------------------------------


@needs_triton
def test_kernels_compile_for_hopper():
    """The interpreter runs code the GPU compiler may reject: compile for sm_90, no GPU needed.

    A separate process, because Triton cannot compile in a process that imported it in
    interpreter mode (its own tl.sum and friends are then interpreter-only).
    """
    try:
        import triton.backends

        if "nvidia" not in triton.backends.backends:
            pytest.skip("this Triton build has no NVIDIA backend")
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"cannot inspect Triton's backends: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")  # silence a 3.9 warning
    result = subprocess.run(
        [sys.executable, "-m", "bitconvert.kernels.compile_check", "--quick"],
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 5, result.stdout

KERNEL_CHECK = """
import json, sys, torch
from bitconvert.runtime import generate, load_model
prompt = json.loads(sys.argv[1])
out = {}
for fixture in sys.argv[2:]:
    plain = load_model(fixture)
    kernel = load_model(fixture, use_kernels=True)
    assert kernel.layers[0].q.packed is not None and kernel.layers[0].q.codes is None
    out[fixture] = {
        "gemm": torch.equal(kernel.logits(prompt), plain.logits(prompt)),
        "gemv": torch.equal(kernel.logits(prompt[:5]), plain.logits(prompt[:5])),
        "generate": generate(kernel, prompt[:4], max_new_tokens=6) == generate(plain, prompt[:4], max_new_tokens=6),
    }
print(json.dumps(out))
"""


def test_the_runtime_on_triton_kernels_equals_the_torch_path():
    """The CUDA path calls bitconvert.kernels.ternary_linear; under TRITON_INTERPRET=1 (set before
    Triton is imported, hence a fresh process) the same kernels run on the CPU, so the integration
    is tested here: GEMM above 8 tokens, GEMV at or below, and generation with the cache."""
    from bitconvert.kernels import triton_unavailable_reason

    if triton_unavailable_reason():
        pytest.skip(triton_unavailable_reason())
    fixtures = [str(FIXTURES / f) for f in ("bitnet-2b4t-packed", "llama-packed")]
    prompt = [5, 17, 99, 3, 250, 42, 7, 7, 130, 64, 1, 200, 31, 8, 77, 150]
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", KERNEL_CHECK, json.dumps(prompt), *fixtures],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert results == {f: {"gemm": True, "gemv": True, "generate": True} for f in fixtures}
