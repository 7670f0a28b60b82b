"""Triton kernels for W1.58A8 linear layers: a fused GEMV for decode, quantize + int8 GEMM for prefill.

Semantics (see :func:`bitconvert.kernels.torch_path.ternary_linear_torch`): activations are
quantized per token to int8 with ``s = 127 / max(max|x|, 1e-5)`` and round-half-to-even, the
int8 x ternary products are summed exactly in int32, and the sum is divided by ``s`` and then
multiplied by (autobitlinear) or divided by (bitlinear) the stored weight scale, all in fp32.

Tricks shared by the kernels, each exact:

* Weights are used as their stored fields ``f = code + 1`` in {0, 1, 2}; the ``- 1`` is folded
  into one correction per output, ``sum(q * code) = sum(q * f) - sum(q)``.
* Rounding to int8 adds 1.5 * 2**23: for |v| <= 128 the fp32 sum then has unit spacing, so the
  hardware's round-half-to-even does the rounding, and its bit pattern minus that of 1.5 * 2**23
  is the integer (no float->int conversion instruction needed). The clamp sits between the
  multiply and the add, so the two cannot be fused into an FMA that would round differently.
* ``s`` is computed as ``(1 / amax) * 127`` because that is what torch does for ``127.0 / t``;
  divisions use ``div_rn`` and launches pass ``enable_fp_fusion=False``, so every fp32 step
  rounds exactly like the torch reference and the results are bit-identical to it.
* bf16 outputs are rounded half-to-even onto the bf16 grid with integer ops before the cast:
  the Triton interpreter's fp32->bf16 cast truncates, and tests must see what the GPU does.
"""

# No `from __future__ import annotations` here: Triton must see `tl.constexpr` annotations as objects.
import torch
import triton
import triton.language as tl

from .activations import ACTIVATION_FLOOR as _FLOOR
from .backend import multiprocessor_count, triton_kernel
from .layout import PreparedTernaryWeight

ROUNDING_OFFSET = tl.constexpr(12582912.0)  # 1.5 * 2**23
ROUNDING_OFFSET_BITS = tl.constexpr(0x4B400000)  # its fp32 bit pattern
ACTIVATION_FLOOR = tl.constexpr(_FLOOR)  # the clamp of quantize_activations


@triton_kernel
def activation_scale(amax):
    """127 / max(amax, 1e-5), rounded the way torch computes ``127.0 / t`` (reciprocal, then product)."""
    return tl.math.div_rn(1.0, tl.maximum(amax, ACTIVATION_FLOOR)) * 127.0


@triton_kernel
def quantize(x, act_scale):
    """round_half_even(x * act_scale) clamped to int8, as int32 (see the module docstring)."""
    v = tl.minimum(tl.maximum(x * act_scale, -128.0), 127.0)
    return (v + ROUNDING_OFFSET).to(tl.int32, bitcast=True) - ROUNDING_OFFSET_BITS


@triton_kernel
def rescale(exact_sum, act_scale, weight_scale, DIVIDE_BY_SCALE: tl.constexpr, ROUND_TO_BF16: tl.constexpr):
    """fp32 output from an exact int32 sum: divided by the activation scale, then by or times the weight scale."""
    y = tl.math.div_rn(exact_sum.to(tl.float32), act_scale)
    if DIVIDE_BY_SCALE:
        y = tl.math.div_rn(y, weight_scale)
    else:
        y = y * weight_scale
    if ROUND_TO_BF16:
        # Round half to even onto the bf16 grid with integer ops, so the cast that follows is
        # exact: the interpreter's cast truncates, the GPU's rounds, and both must match torch.
        bits = y.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        y = bits.to(tl.float32, bitcast=True)
    return y


@triton_kernel
def gemv_kernel(
    x_ptr,
    packed_ptr,
    scale_ptr,
    out_ptr,
    M,
    K,
    rows_per_plane,
    stride_xm,
    stride_om,
    DIVIDE_BY_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # One program: all M tokens against BLOCK_R packed rows, i.e. 4 * BLOCK_R output features
    # (BLOCK_R from each 2-bit plane). Each weight byte is loaded once and never leaves registers.
    #
    # Layout notes (why the tiles look the way they do): every tile is 4-D,
    # [token, packed row, K / 8, 8], and both loads have 8 contiguous elements in the last axis.
    # Triton then gives the weight tile (uint8) and the activation tile (16-bit) the same
    # register layout when BLOCK_K >= 256 * num_warps, so the products need no layout conversion
    # through shared memory; each thread sums its own 8 products (axis 3) in registers, and the
    # cross-thread reductions happen once, after the K loop. 2-D or 3-D formulations made the
    # compiler shuffle every weight plane through shared memory on each iteration.
    offs_m = tl.arange(0, BLOCK_M)[:, None, None, None]
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k0 = (tl.arange(0, BLOCK_K // 8)[:, None] * 8 + tl.arange(0, 8)[None, :])[None, None, :, :]
    token_ok = offs_m < M
    packed_row_ok = (offs_r < rows_per_plane)[None, :, None, None]
    x_rows = x_ptr + offs_m * stride_xm
    w_rows = packed_ptr + offs_r[None, :, None, None].to(tl.int64) * K

    # Quantization needs max|x| per token before any product; x is small and stays in L2, so
    # every program reads it twice rather than paying a second kernel launch per layer.
    amax = tl.zeros([BLOCK_M, 1, BLOCK_K // 8], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        x = tl.load(x_rows + offs_k, mask=token_ok & (offs_k < K), other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=3))
    amax = tl.max(amax, axis=2)  # [BLOCK_M, 1]
    act_scale = activation_scale(amax)

    acc0 = tl.zeros([BLOCK_M, BLOCK_R, BLOCK_K // 8], dtype=tl.int32)
    acc1 = tl.zeros([BLOCK_M, BLOCK_R, BLOCK_K // 8], dtype=tl.int32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_R, BLOCK_K // 8], dtype=tl.int32)
    acc3 = tl.zeros([BLOCK_M, BLOCK_R, BLOCK_K // 8], dtype=tl.int32)
    q_partial_sum = tl.zeros([BLOCK_M, 1, BLOCK_K // 8], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        k_ok = offs_k < K
        x = tl.load(x_rows + offs_k, mask=token_ok & k_ok, other=0.0).to(tl.float32)
        q = quantize(x, act_scale[:, :, None, None])
        q_partial_sum += tl.sum(q, axis=3)
        byte = tl.load(w_rows + offs_k, mask=packed_row_ok & k_ok, other=0).to(tl.int32)
        acc0 += tl.sum(q * (byte & 3), axis=3)
        acc1 += tl.sum(q * ((byte >> 2) & 3), axis=3)
        acc2 += tl.sum(q * ((byte >> 4) & 3), axis=3)
        acc3 += tl.sum(q * ((byte >> 6) & 3), axis=3)

    q_sum = tl.sum(q_partial_sum, axis=2)  # [BLOCK_M, 1]
    round_to_bf16: tl.constexpr = out_ptr.dtype.element_ty == tl.bfloat16
    weight_scale = tl.load(scale_ptr).to(tl.float32)
    out_rows = out_ptr + tl.arange(0, BLOCK_M)[:, None] * stride_om
    store_ok = (tl.arange(0, BLOCK_M) < M)[:, None] & (offs_r < rows_per_plane)[None, :]
    for plane in tl.static_range(4):
        if plane == 0:
            acc = acc0
        elif plane == 1:
            acc = acc1
        elif plane == 2:
            acc = acc2
        else:
            acc = acc3
        y = rescale(tl.sum(acc, axis=2) - q_sum, act_scale, weight_scale, DIVIDE_BY_SCALE, round_to_bf16)
        features = plane * rows_per_plane + offs_r
        tl.store(out_rows + features[None, :], y.to(out_ptr.dtype.element_ty), mask=store_ok)


@triton_kernel
def quantize_rows_kernel(
    x_ptr, q_ptr, act_scale_ptr, q_sum_ptr, M, K, stride_xm, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr
):
    # BLOCK_ROWS tokens per program: int8 values, the fp32 scale 127/max|x| and sum(q) for the
    # GEMM's code offset correction.
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm
    q_rows = q_ptr + rows[:, None].to(tl.int64) * K
    offs_k0 = tl.arange(0, BLOCK_K)
    amax = tl.zeros([BLOCK_ROWS, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        ok = row_ok[:, None] & (offs_k < K)[None, :]
        x = tl.load(x_rows + offs_k[None, :], mask=ok, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    act_scale = activation_scale(tl.max(amax, axis=1))
    q_sum = tl.zeros([BLOCK_ROWS, BLOCK_K], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        ok = row_ok[:, None] & (offs_k < K)[None, :]
        x = tl.load(x_rows + offs_k[None, :], mask=ok, other=0.0).to(tl.float32)
        q = quantize(x, act_scale[:, None])
        q_sum += q
        tl.store(q_rows + offs_k[None, :], q.to(tl.int8), mask=ok)
    tl.store(act_scale_ptr + rows, act_scale, mask=row_ok)
    tl.store(q_sum_ptr + rows, tl.sum(q_sum, axis=1), mask=row_ok)


@triton_kernel
def gemm_kernel(
    q_ptr,
    act_scale_ptr,
    q_sum_ptr,
    packed_ptr,
    scale_ptr,
    out_ptr,
    M,
    K,
    rows_per_plane,
    stride_om,
    DIVIDE_BY_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Token blocks vary fastest so the programs sharing one weight tile run together (L2 reuse).
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(M, BLOCK_M)
    first_row = (pid // m_blocks) * BLOCK_R
    offs_m = (pid % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = first_row + tl.arange(0, BLOCK_R)
    offs_k0 = tl.arange(0, BLOCK_K)
    token_ok = offs_m < M
    packed_row_ok = offs_r < rows_per_plane
    q_rows = q_ptr + offs_m[:, None].to(tl.int64) * K
    w_rows = packed_ptr + offs_r[:, None].to(tl.int64) * K
    shifts = (tl.arange(0, 4) * 2)[:, None, None]

    # The four planes of a [BLOCK_R, BLOCK_K] byte tile are stacked into one [4 * BLOCK_R, BLOCK_K]
    # int8 operand: one tensor-core dot (N = 4 * BLOCK_R) per step instead of four narrow ones,
    # each of which would wait for the previous.
    acc = tl.zeros([BLOCK_M, 4 * BLOCK_R], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        k_ok = offs_k < K
        a = tl.load(q_rows + offs_k[None, :], mask=token_ok[:, None] & k_ok[None, :], other=0)
        byte = tl.load(w_rows + offs_k[None, :], mask=packed_row_ok[:, None] & k_ok[None, :], other=0)
        fields = ((byte[None, :, :] >> shifts) & 3).to(tl.int8)
        w = tl.reshape(fields, [4 * BLOCK_R, BLOCK_K])
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)

    act_scale = tl.load(act_scale_ptr + offs_m, mask=token_ok, other=1.0)
    q_sum = tl.load(q_sum_ptr + offs_m, mask=token_ok, other=0)
    weight_scale = tl.load(scale_ptr).to(tl.float32)
    round_to_bf16: tl.constexpr = out_ptr.dtype.element_ty == tl.bfloat16
    y = rescale(acc - q_sum[:, None], act_scale[:, None], weight_scale, DIVIDE_BY_SCALE, round_to_bf16)
    # Column j of the tile is plane j // BLOCK_R, packed row first_row + j % BLOCK_R.
    j = tl.arange(0, 4 * BLOCK_R)
    row = first_row + j % BLOCK_R
    features = (j // BLOCK_R) * rows_per_plane + row
    store_ok = token_ok[:, None] & (row < rows_per_plane)[None, :]
    out_rows = out_ptr + offs_m[:, None].to(tl.int64) * stride_om
    tl.store(out_rows + features[None, :], y.to(out_ptr.dtype.element_ty), mask=store_ok)


# ---- launch configuration -------------------------------------------------------------------
# Untuned first guesses (no GPU was available when these were written); see docs/kernels.md.

GEMV_WARPS = 4


def gemv_blocks(tokens: int, rows_per_plane: int, in_features: int, sm_count: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_R, BLOCK_K) for the GEMV on a GPU with ``sm_count`` SMs, or for the
    interpreter (``None``), which runs programs one after another and wants few, large ones."""
    block_m = triton.next_power_of_2(max(tokens, 1))
    # 256 * warps is the smallest tile for which Triton gives x and W one register layout; a
    # shorter K only needs its own length.
    block_k = min(256 * GEMV_WARPS, max(64, triton.next_power_of_2(in_features)))
    if sm_count is None:
        return block_m, min(64, triton.next_power_of_2(rows_per_plane)), block_k
    # Each thread keeps 4 * BLOCK_M * BLOCK_R accumulators plus its x and weight slices; beyond
    # 8 token-rows the kernel needs over ~130 registers (ptxas, sm_90) and occupancy drops.
    block_r = max(1, 8 // block_m)
    while block_r > 1 and triton.cdiv(rows_per_plane, block_r) < 2 * sm_count:
        block_r //= 2
    return block_m, block_r, block_k


def gemm_blocks(tokens: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_R, BLOCK_K, num_warps) for the GEMM; tl.dot needs every block >= 16."""
    block_m = min(128, max(16, triton.next_power_of_2(tokens)))
    return block_m, 32, 128, 8 if block_m >= 128 else 4


def _check_out(out: torch.Tensor, tokens: int, weight: PreparedTernaryWeight) -> None:
    if out.shape != (tokens, weight.out_features) or out.stride(1) != 1:
        raise ValueError(f"out must be [{tokens}, {weight.out_features}] with unit column stride")


def launch_gemv(
    x: torch.Tensor,
    weight: PreparedTernaryWeight,
    scale: torch.Tensor,
    divide_by_scale: bool,
    out: torch.Tensor,
    blocks: tuple[int, int, int] | None = None,
) -> None:
    """``out [M, N] = W1.58A8 linear of x [M, K]`` in one kernel; meant for small M (decode)."""
    tokens, in_features = x.shape
    _check_out(out, tokens, weight)
    sm_count = multiprocessor_count(x.device) if x.device.type == "cuda" else None
    block_m, block_r, block_k = blocks or gemv_blocks(tokens, weight.rows_per_plane, in_features, sm_count)
    grid = (triton.cdiv(weight.rows_per_plane, block_r),)
    gemv_kernel[grid](
        x,
        weight.packed,
        scale,
        out,
        tokens,
        in_features,
        weight.rows_per_plane,
        x.stride(0),
        out.stride(0),
        DIVIDE_BY_SCALE=divide_by_scale,
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        num_warps=GEMV_WARPS,
        enable_fp_fusion=False,
    )


def launch_gemm(
    x: torch.Tensor,
    weight: PreparedTernaryWeight,
    scale: torch.Tensor,
    divide_by_scale: bool,
    out: torch.Tensor,
    blocks: tuple[int, int, int, int] | None = None,
) -> None:
    """``out [M, N] = W1.58A8 linear of x [M, K]``: quantize once, then an int8 tensor-core GEMM."""
    tokens, in_features = x.shape
    _check_out(out, tokens, weight)
    device = x.device
    q = torch.empty((tokens, in_features), dtype=torch.int8, device=device)
    act_scale = torch.empty(tokens, dtype=torch.float32, device=device)
    q_sum = torch.empty(tokens, dtype=torch.int32, device=device)
    # One token per program on a GPU; the interpreter prefers few programs.
    quant_rows = 1 if device.type == "cuda" else min(64, triton.next_power_of_2(tokens))
    quantize_rows_kernel[(triton.cdiv(tokens, quant_rows),)](
        x,
        q,
        act_scale,
        q_sum,
        tokens,
        in_features,
        x.stride(0),
        BLOCK_ROWS=quant_rows,
        BLOCK_K=min(1024, triton.next_power_of_2(max(in_features, 16))),
        num_warps=4,
        enable_fp_fusion=False,
    )
    block_m, block_r, block_k, warps = blocks or gemm_blocks(tokens)
    grid = (triton.cdiv(tokens, block_m) * triton.cdiv(weight.rows_per_plane, block_r),)
    gemm_kernel[grid](
        q,
        act_scale,
        q_sum,
        weight.packed,
        scale,
        out,
        tokens,
        in_features,
        weight.rows_per_plane,
        out.stride(0),
        DIVIDE_BY_SCALE=divide_by_scale,
        BLOCK_M=block_m,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        num_warps=warps,
        num_stages=3,
        enable_fp_fusion=False,
    )
