"""Triton kernel: microsoft/BitNet's W2A8 int2 weights (``bitnet-gpu``) to int8 codes, read as its CUDA kernel reads them.

``ladder_int8xint2_kernel`` (``gpu/bitnet_kernels/bitnet_kernels.h``) gives each block 16 output
rows and each thread ``(x < 8, y < 16)`` one 32-bit word per step ``k0``: row ``16 * block + y``,
columns ``128 * k0 + 16 * x .. + 15``, at byte ``block * 16 * K/4 + k0 * 512 + (x >> 1) * 128 +
(y >> 3) * 64 + (x & 1) * 32 + (y & 7) * 4``; ``(word >> 2i) & 0x03030303`` minus ``0x02020202``
are then the codes of columns ``16 * x + 4i .. 4i + 3``. This kernel computes the same addresses and
shifts for every word (one program per 16-row block), so the codes it writes are the ones that
kernel multiplies with. Imports Triton.
"""

# No `from __future__ import annotations` here: Triton must see `tl.constexpr` annotations as objects.
import torch
import triton.language as tl

from .backend import triton_kernel

#: 16-column groups (one word per row each) per step of a program
GROUPS = 32


@triton_kernel
def w2a8_unpack_kernel(words_ptr, out_ptr, K, GROUPS: tl.constexpr):
    block = tl.program_id(0).to(tl.int64)
    y = tl.arange(0, 16)[:, None]  # the thread's row in the block
    for start in range(0, K // 16, GROUPS):
        c = start + tl.arange(0, GROUPS)[None, :]  # 16-column group: k0 = c // 8, x = c % 8
        k0, x = c // 8, c % 8
        byte = block * 16 * (K // 4) + k0 * 512 + (x >> 1) * 128 + (y >> 3) * 64 + (x & 1) * 32 + (y & 7) * 4
        live = (c < K // 16) & (y < 16)
        word = tl.load(words_ptr + byte // 4, mask=live, other=0x02020202)
        row = out_ptr + (block * 16 + y) * K + 16 * c
        for i in tl.static_range(4):
            lanes = (word >> (2 * i)) & 0x03030303
            for q in tl.static_range(4):
                code = ((lanes >> (8 * q)) & 0xFF) - 2
                tl.store(row + 4 * i + q, code.to(tl.int8), mask=live)


def launch_w2a8_unpack(packed: torch.Tensor, out: torch.Tensor) -> None:
    """Fill ``out`` (int8 ``[N, K]``) from contiguous ``packed`` (``[N, K/4]`` bytes, N % 16 == 0, K % 32 == 0)."""
    n, k = out.shape
    if n == 0:
        return
    words = packed.contiguous().view(torch.uint8).reshape(-1).view(torch.int32)
    w2a8_unpack_kernel[(n // 16,)](words, out, k, GROUPS=GROUPS)
