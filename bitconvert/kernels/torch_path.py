"""Pure torch implementations, used where the Triton kernels cannot run (CPU without the interpreter).

They are the semantics the kernels must reproduce, written with :mod:`bitconvert.ternary`.
"""

from __future__ import annotations

import torch

from ..ternary import LinearClass, quantize_activations, unpack_codes


def unpack_ternary_torch(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return unpack_codes(packed).to(dtype)


def ternary_linear_torch(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, linear_class: LinearClass
) -> torch.Tensor:
    """W1.58A8: per-token int8 activations times ternary codes, rescaled; output in ``x.dtype``.

    Sums of int8 x ternary products stay far below 2**24, so the fp32 matmul is exact and the
    result only depends on the order of the two final divisions/multiplications.
    """
    q, act_scale = quantize_activations(x)
    codes = unpack_codes(packed).to(torch.float32)
    y = (q.to(torch.float32) @ codes.T) / act_scale
    weight_scale = scale.reshape(()).to(device=y.device, dtype=torch.float32)
    y = y * weight_scale if linear_class is LinearClass.AUTOBITLINEAR else y / weight_scale
    return y.to(x.dtype)
