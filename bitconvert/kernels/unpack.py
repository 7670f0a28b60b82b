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
