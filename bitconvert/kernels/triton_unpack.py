"""Triton kernel: HF row-block packed bytes to codes in int8, fp16 or bf16. Imports Triton."""

# No `from __future__ import annotations` here: Triton must see `tl.constexpr` annotations as objects.
import torch
import triton
import triton.language as tl

from .backend import triton_kernel

#: Packed bytes per program: 16 per thread at 4 warps (two 8-byte loads for 2-byte outputs).
UNPACK_BLOCK = 2048
UNPACK_WARPS = 4


@triton_kernel
def unpack_kernel(packed_ptr, out_ptr, n_bytes, BLOCK: tl.constexpr, VEC: tl.constexpr, OUT_IS_FLOAT: tl.constexpr):
    # Flat view: with R/4 rows of C bytes, the code of plane i for byte j lands at j + i * (R/4 * C),
    # so the whole unpack is elementwise over the packed bytes and every access is contiguous.
    # The tile is [BLOCK / VEC, VEC] with VEC = 16 bytes of output per thread: Triton then gives
    # the byte loads and the code stores one register layout (a flat tile made it vectorize loads
    # at 16 bytes and 2-byte stores at 8 elements, and shuffle every plane through shared memory).
    tile = tl.arange(0, BLOCK // VEC)[:, None] * VEC + tl.arange(0, VEC)[None, :]
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tile
    in_bounds = offs < n_bytes
    byte = tl.load(packed_ptr + offs, mask=in_bounds, other=0).to(tl.int32)
    out_plane = out_ptr + offs  # stepping the pointer keeps plane * n_bytes out of int32
    for plane in tl.static_range(4):
        field = (byte >> (2 * plane)) & 3
        if OUT_IS_FLOAT:
            # 2**23 + field as fp32 bits, minus 2**23 + 1: exact, and avoids int->float conversions
            # (quarter-rate on the GPU; int->bf16 casts are also wrong in the interpreter).
            code = (field | 0x4B000000).to(tl.float32, bitcast=True) - 8388609.0
        else:
            code = field - 1
        tl.store(out_plane, code.to(out_ptr.dtype.element_ty), mask=in_bounds)
        out_plane += n_bytes


def launch_unpack(packed: torch.Tensor, out: torch.Tensor) -> None:
    """Fill ``out`` (contiguous ``[4 * R/4, C]``) from contiguous ``packed`` (``uint8 [R/4, C]``)."""
    n_bytes = packed.numel()
    if n_bytes == 0:
        return
    grid = (triton.cdiv(n_bytes, UNPACK_BLOCK),)
    unpack_kernel[grid](
        packed,
        out,
        n_bytes,
        BLOCK=UNPACK_BLOCK,
        VEC=unpack_vector_width(out.dtype),
        OUT_IS_FLOAT=out.dtype.is_floating_point,
        num_warps=UNPACK_WARPS,
    )


def unpack_vector_width(dtype: torch.dtype) -> int:
    """Codes per thread and access: 16 bytes of output."""
    return 16 // dtype.itemsize
