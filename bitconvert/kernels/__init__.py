"""GPU kernels (Triton) for ternary weights, with torch fallbacks; see docs/kernels.md.

Public API:

* :func:`unpack_ternary` -- packed HF layout to int8/bf16/fp16 codes.
* :func:`unpack_w2a8` -- microsoft/BitNet's W2A8 GPU layout (``bitnet-gpu``) to int8 codes.
* :func:`ternary_linear` -- fused W1.58A8 linear layer (GEMV for decode, GEMM for prefill).
* :func:`prepare_weight` / :class:`PreparedTernaryWeight` -- the load-time form of a weight.
* :func:`triton_available`, :func:`triton_unavailable_reason`, :func:`uses_triton` -- where the
  kernels run. Importing this package does not import Triton; ``uses_triton`` and the first
  kernel launch do, and Triton's compile-or-interpret mode is fixed by ``TRITON_INTERPRET`` then.
"""

from .backend import triton_available, triton_unavailable_reason, uses_triton
from .layout import PreparedTernaryWeight, prepare_weight
from .linear import GEMV_MAX_TOKENS, ternary_linear
from .unpack import unpack_ternary, unpack_w2a8

__all__ = [
    "GEMV_MAX_TOKENS",
    "PreparedTernaryWeight",
    "prepare_weight",
    "ternary_linear",
    "triton_available",
    "triton_unavailable_reason",
    "unpack_ternary",
    "unpack_w2a8",
    "uses_triton",
]
