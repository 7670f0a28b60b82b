"""Public fused W1.58A8 linear: picks the GEMV (decode) or GEMM (prefill) kernel, or torch."""

from __future__ import annotations

import numpy as np
import torch

from ..ternary import LinearClass
from .backend import uses_triton
from .layout import PreparedTernaryWeight, prepare_weight
from .torch_path import ternary_linear_torch

#: Token counts up to this use the single-kernel GEMV; above it, quantize + tensor-core GEMM.
GEMV_MAX_TOKENS = 8


def ternary_linear(
    x: torch.Tensor,
    weight: torch.Tensor | np.ndarray | PreparedTernaryWeight,
    scale: torch.Tensor,
    linear_class: LinearClass | str,
) -> torch.Tensor:
    """A BitNet b1.58 linear layer: ``x [..., in]`` to ``[..., out]`` in ``x.dtype``.

    ``weight`` is the packed HF-layout ``uint8 [out/4, in]`` or the result of
    :func:`bitconvert.kernels.prepare_weight`; ``scale`` is the stored one-element
    ``weight_scale`` (any float dtype) and ``linear_class`` says what it means. All three must sit
    on ``x``'s device (packed numpy bytes are taken there). The result equals, to fp32 rounding::

        q, s = quantize_activations(x)                 # int8 per token, s = 127 / max|x| (bitconvert.runtime)
        y = (q.float() @ unpack_codes(weight).float().T) / s
        y = y * scale   (autobitlinear)   or   y / scale   (bitlinear)
        return y.to(x.dtype)

    On CUDA this is one kernel for up to ``GEMV_MAX_TOKENS`` tokens (decode: the 2-bit weight is
    read once and never unpacked to memory) and two kernels above (quantize, int8 GEMM); nothing
    synchronizes with the host, so it can be captured in a CUDA graph. CPU tensors use the same
    kernels when Triton was imported with ``TRITON_INTERPRET=1`` (slow; for tests) and plain torch
    otherwise (see :func:`bitconvert.kernels.uses_triton`).
    """
    linear_class = LinearClass(linear_class)
    prepared = prepare_weight(weight, device=x.device if isinstance(weight, np.ndarray) else None)
    _check_arguments(x, prepared, scale)
    if not uses_triton(x.device):
        return ternary_linear_torch(x, prepared.packed, scale, linear_class)

    from .triton_linear import launch_gemm, launch_gemv

    x2d = x.reshape(-1, prepared.in_features)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    tokens = x2d.shape[0]
    out = torch.empty((tokens, prepared.out_features), dtype=x.dtype, device=x.device)
    if tokens:
        launch = launch_gemv if tokens <= GEMV_MAX_TOKENS else launch_gemm
        launch(x2d, prepared, scale, linear_class is LinearClass.BITLINEAR, out)
    return out.reshape(*x.shape[:-1], prepared.out_features)


def _check_arguments(x: torch.Tensor, weight: PreparedTernaryWeight, scale: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(f"ternary_linear needs floating-point activations, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] != weight.in_features:
        raise ValueError(f"x has shape {tuple(x.shape)}, the weight expects {weight.in_features} input features")
    if scale.numel() != 1 or not scale.is_floating_point():
        raise ValueError(f"scale must be a one-element float tensor, got {scale.dtype} {tuple(scale.shape)}")
    if weight.device != x.device or scale.device != x.device:
        raise ValueError(f"x ({x.device}), weight ({weight.device}) and scale ({scale.device}) must share a device")
