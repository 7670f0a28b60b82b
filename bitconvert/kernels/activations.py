"""W1.58A8's activation side: per-token absmax quantization to int8, in torch.

Every ternary layer quantizes its input this way before the integer product (transformers'
``ActQuant``): the runtime's torch path calls it, the Triton kernels reproduce it step for step.
It lives with the kernels (which the runtime builds on), not in the ternary package, which holds
weights in numpy and never imports torch.
"""

from __future__ import annotations

import torch

from ..ternary.quantize import MEAN_ABS_FLOOR

#: max|x| is clamped from below like mean|W| (a Python float: torch rounds it to float32 itself)
ACTIVATION_FLOOR = float(MEAN_ABS_FLOOR)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization (last dim): (int8 values, fp32 scale ``127/max|x|``)."""
    xf = x.float()
    scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACTIVATION_FLOOR)
    q = (xf * scale).round().clamp(-128, 127).to(torch.int8)
    return q, scale
