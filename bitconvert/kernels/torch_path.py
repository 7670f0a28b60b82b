"""Pure torch implementations, used where the Triton kernels cannot run (CPU without the interpreter).

They are the semantics the kernels must reproduce: the packed layout of
:mod:`bitconvert.ternary.packing` (there in numpy, here in torch on any device) and the runtime's
per-token activation quantization.
"""

from __future__ import annotations

import torch

from .activations import quantize_activations
from ..ternary import VALUES_PER_BYTE, LinearClass


def unpack_ternary_torch(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`bitconvert.ternary.unpack_codes` in torch: plane ``i`` (bits ``2i..2i+1``) holds rows
    ``i*R/4 ..``; a field holding 3 comes back as 2, as there."""
    planes = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])
    codes = planes.reshape(-1, packed.shape[1]).to(torch.int8) - 1
    return codes if dtype == torch.int8 else codes.to(dtype)


def ternary_linear_torch(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, linear_class: LinearClass
) -> torch.Tensor:
    """W1.58A8: per-token int8 activations times ternary codes, rescaled; output in ``x.dtype``.

    Sums of int8 x ternary products stay far below 2**24, so the fp32 matmul is exact and the
    result only depends on the order of the two final divisions/multiplications.
    """
    q, act_scale = quantize_activations(x)
    codes = unpack_ternary_torch(packed, torch.float32)
    y = (q.to(torch.float32) @ codes.T) / act_scale
    weight_scale = scale.reshape(()).to(device=y.device, dtype=torch.float32)
    y = y * weight_scale if linear_class is LinearClass.AUTOBITLINEAR else y / weight_scale
    return y.to(x.dtype)
