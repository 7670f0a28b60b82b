"""W1.58A8 linear layers: int8 activations times ternary codes, one scale per weight.

The layer holds the ternary codes as int8 (one byte per weight, half of a bf16 copy) or, on CUDA
with the Triton kernels, the packed 2-bit bytes. The product of int8 activations and ternary codes
is an integer below 127 * in_features < 2**24, so every path below computes it exactly; results
then differ from transformers only in the two final scalings, done in fp32 in the order of
:func:`bitconvert.kernels.torch_path.ternary_linear_torch`: divide by the activation scale, then
multiply by (autobitlinear) or divide by (bitlinear) the stored weight scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..dtypes import Dense
from ..kernels.activations import quantize_activations
from ..ternary import VALUES_PER_BYTE, LinearClass, TernaryWeight, pack_codes

_int_mm_works: dict[str, bool] = {}


def exact_int_matmul(q: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``q @ codes.T`` for int8 ``q [M, K]`` and int8 ``codes [N, K]``, exact, as float32 ``[M, N]``."""
    dev = q.device.type
    # torch._int_mm (int8 x int8 -> int32) is the fast CPU path; CUDA restricts its shapes, older
    # torch builds may lack it: the fp32 product of the same integers is exact as well.
    if dev == "cpu" and _int_mm_works.get(dev, True):
        try:
            return torch._int_mm(q, codes.t()).to(torch.float32)
        except (RuntimeError, AttributeError, NotImplementedError):
            _int_mm_works[dev] = False
    return q.to(torch.float32) @ codes.to(torch.float32).t()


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm/BitNetRMSNorm: normalize in fp32, cast back, then scale."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    h = h.to(dtype)
    return h if weight is None else weight * h


def offset_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    """An RMSNorm whose gain is ``offset + weight`` (``NormSpec.offset``). Without an offset it is
    :func:`rms_norm`; with one it is Gemma's kind, which transformers (Gemma3RMSNorm) multiplies in
    fp32 before casting back, where Llama's casts back first."""
    if not offset:
        return rms_norm(x, weight, eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (offset + weight.to(torch.float32))).to(x.dtype)


class TernaryLinear:
    """One quantized projection; call it on ``[..., in_features]`` activations."""

    def __init__(
        self,
        weight: TernaryWeight,
        device: torch.device,
        *,
        input_rms_norm_eps: float | None = None,
        use_kernel: bool = False,
    ) -> None:
        self.out_features, self.in_features = weight.shape
        self.linear_class = weight.scale.linear_class
        # the stored value, widened exactly to fp32 (bf16/f16/f32 all fit)
        self.scale = torch.tensor(weight.scale.item(), dtype=torch.float32, device=device)
        #: transformers' quantization_config.use_rms_norm: a weightless RMSNorm before quantizing
        self.input_rms_norm_eps = input_rms_norm_eps
        self.packed = None
        self.codes: torch.Tensor | None = None
        if use_kernel and self.out_features % VALUES_PER_BYTE == 0:
            from ..kernels import prepare_weight

            self.packed = prepare_weight(pack_codes(weight.codes), device=device)
        else:  # the numpy codes shared, not copied, where they already are int8 and writable
            self.codes = Dense(weight.codes.astype(np.int8, copy=False), "I8").torch().to(device)

    @property
    def nbytes(self) -> int:
        held = self.codes if self.codes is not None else self.packed.packed
        return held.numel() * held.element_size() + 4

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rms_norm_eps is not None:
            x = rms_norm(x, None, self.input_rms_norm_eps)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.packed is not None:
            from ..kernels import ternary_linear

            y = ternary_linear(x2, self.packed, self.scale, self.linear_class)
        else:
            q, act_scale = quantize_activations(x2)
            y = exact_int_matmul(q, self.codes).div_(act_scale)
            y = y.mul_(self.scale) if self.linear_class is LinearClass.AUTOBITLINEAR else y.div_(self.scale)
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)


class DenseLinear:
    """A projection left unquantized (``modules_to_not_convert``, or the LM head)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self.out_features, self.in_features = weight.shape

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def kernels_usable(device: torch.device) -> bool:
    """Whether the Triton ternary kernels can serve ``device``: CUDA with Triton importable, or the
    CPU under ``TRITON_INTERPRET=1`` (the interpreter: slow, for testing the integration)."""
    try:
        from ..kernels import uses_triton
    except ImportError:
        return False
    return uses_triton(device)
