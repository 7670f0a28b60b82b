"""Public unpack: packed ternary bytes to dense codes, on the GPU when possible."""

from __future__ import annotations

import numpy as np
import torch

from ..ternary import VALUES_PER_BYTE
from .backend import uses_triton
from .layout import PreparedTernaryWeight, as_packed_tensor
from .torch_path import unpack_ternary_torch

UNPACK_DTYPES = (torch.int8, torch.bfloat16, torch.float16)


def unpack_ternary(
    packed: torch.Tensor | np.ndarray | PreparedTernaryWeight, dtype: torch.dtype = torch.int8
) -> torch.Tensor:
    """Unpack an HF row-block packed weight ``uint8 [R/4, C]`` (torch, or numpy bytes: on the CPU) into
    codes ``[R, C]`` of ``dtype``.

    ``dtype`` is int8, bfloat16 or float16. The result equals
    :func:`bitconvert.ternary.unpack_codes` of the same bytes, in ``dtype``, bit for bit (a 2-bit field holding the
    invalid value 3 gives 2 in both). Runs the Triton kernel on CUDA, and on CPU when Triton was
    imported with ``TRITON_INTERPRET=1``; otherwise torch.
    """
    if isinstance(packed, PreparedTernaryWeight):
        packed = packed.packed
    if dtype not in UNPACK_DTYPES:
        raise ValueError(f"unpack_ternary produces one of {UNPACK_DTYPES}, not {dtype}")
    packed = as_packed_tensor(packed)  # a ValueError unless 2-D uint8
    if not uses_triton(packed.device):
        return unpack_ternary_torch(packed, dtype)

    from .triton_unpack import launch_unpack

    packed = packed.contiguous()
    out = torch.empty((packed.shape[0] * VALUES_PER_BYTE, packed.shape[1]), dtype=dtype, device=packed.device)
    launch_unpack(packed, out)
    return out


def unpack_w2a8(packed: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Codes ``int8 [N, K]`` of a W2A8 int2 weight (microsoft/BitNet's GPU layout, ``bitnet-gpu``:
    ``[N, K/4]`` bytes in 16 x 32 tiles), decoded by the addresses and shifts its CUDA kernel uses.

    Runs the Triton kernel on CUDA, and on CPU when Triton was imported with ``TRITON_INTERPRET=1``;
    otherwise the format's numpy decoder. A field holding 0 (never written) gives -2 in both.
    """
    if isinstance(packed, np.ndarray):
        packed = torch.from_numpy(np.ascontiguousarray(packed))
    if packed.dim() != 2 or packed.element_size() != 1 or packed.shape[0] % 16 or (packed.shape[1] * 4) % 32:
        raise ValueError(f"a W2A8 weight is [N, K/4] bytes with N % 16 == 0 and K % 32 == 0, got {tuple(packed.shape)}")
    if not uses_triton(packed.device):
        from ..formats.bitnet_gpu.layout import decode_int2

        return torch.from_numpy(decode_int2(packed.contiguous().view(torch.uint8).numpy()))
    from .triton_w2a8 import launch_w2a8_unpack

    out = torch.empty((packed.shape[0], packed.shape[1] * 4), dtype=torch.int8, device=packed.device)
    launch_w2a8_unpack(packed, out)
    return out
