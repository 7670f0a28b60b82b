"""Codes of bf16 weight rows on demand, for encoders that pack as they go (GGUF's TQ types).

Part of the ternary math of :mod:`bitconvert.ternary` and :mod:`bitconvert.bf16_codes` (pure, no
I/O): the same scale and zero threshold as :func:`~bitconvert.ternary.absmean_quantize`, so the
same codes, but handed out a few rows at a time in a cache-sized buffer (a few rows per call, from
whichever thread the encoder runs on) instead of as one int8 tensor.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from . import jit
from .bf16_codes import _codes_into, bf16_bits
from .ternary import _scale_of


def bf16_scale_threshold(weight: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """(mean|W| floored, as :func:`~bitconvert.ternary.absmean_quantize` returns it; the zero
    threshold of the codes, or None where the bf16 bit-pattern path does not apply and
    :func:`~bitconvert.ternary.quantize` must be used). Raises NonFiniteWeight as it does."""
    m, _, threshold = _scale_of(weight)
    return m, threshold


def bf16_code_rows(
    weight: torch.Tensor, threshold: int, order: np.ndarray | None = None
) -> Callable[[int, int], np.ndarray]:
    """``rows(r0, r1)``: the codes of rows ``r0:r1`` of the 2-D bf16 ``weight`` as uint8 mod 256
    (255 is -1), the codes :func:`~bitconvert.ternary.absmean_quantize` gives, for ``threshold``
    from :func:`bf16_scale_threshold`. With ``order``, output row ``r`` holds the codes of input
    row ``order[r]``. Each call reuses its thread's buffer: consume it before that thread's next call.
    """
    if weight.dtype != torch.bfloat16 or weight.dim() != 2:
        raise ValueError(f"bf16_code_rows expects a 2-D bf16 tensor, got {weight.dtype} {tuple(weight.shape)}")
    bits = bf16_bits(weight).reshape(weight.shape)
    cols = bits.shape[1]
    local = threading.local()  # one buffer per calling thread
    compiled = jit.kernels(weight.numel())  # the same comparisons as one compiled loop, where numba is

    def rows(r0: int, r1: int) -> np.ndarray:
        n = (r1 - r0) * cols
        held = getattr(local, "held", None)
        if held is None or held[0].size < n:
            held = local.held = (np.empty(n, dtype=np.uint8), np.empty(n, dtype=np.uint8))
        out, tmp = (b[:n].reshape(r1 - r0, cols) for b in held)
        src = bits[r0:r1] if order is None else bits[order[r0:r1]]
        if compiled is not None:
            compiled.codes_flat(src.reshape(-1), threshold, out.reshape(-1), 0, n)
        else:
            _codes_into(src, threshold, out, tmp)
        return out

    return rows
