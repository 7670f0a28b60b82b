"""Each producer's quantization arithmetic, in numpy: the functions the records of
:mod:`bitconvert.ternary.recipes` name (see there for what each producer computes).

Pure functions on numpy values: no files, no printing.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import Dense, bf16_to_f32, f32_to_bf16
from .linear_class import LinearClass
from .quantize import MEAN_ABS_FLOOR, mean_abs, quantize
from .scale import Scale
from .weight import TernaryWeight


def onebitllms_quantize(weight: Dense, linear_class: LinearClass = LinearClass.BITLINEAR, scale_dtype: str = "BF16") -> TernaryWeight:
    """onebitllms' ``_weight_quant`` on the master cast to bf16: every step rounded in bf16.

    torch takes a bf16 tensor's mean as the float32 sum of its float32 values divided in float32,
    then rounded to bf16; ``1 / mean`` and each ``w * s`` are float32 operations rounded to bf16.
    """
    w = weight.to("BF16")
    mean = bf16_to_f32(f32_to_bf16(np.array([mean_abs(w)], dtype=np.float32)))[0]
    mean = max(mean, bf16_to_f32(f32_to_bf16(np.array([MEAN_ABS_FLOOR])))[0])
    with np.errstate(divide="ignore", over="ignore"):
        inv = bf16_to_f32(f32_to_bf16(np.array([np.float32(1.0) / mean], dtype=np.float32)))[0]
    codes = np.empty(w.shape, dtype=np.int8)
    flat, out = w.data.reshape(-1), codes.reshape(-1)
    step = 1 << 16
    with np.errstate(over="ignore", invalid="ignore"):
        for a in range(0, flat.size, step):
            product = bf16_to_f32(f32_to_bf16(bf16_to_f32(flat[a : a + step]) * inv))
            out[a : a + step] = np.clip(np.rint(product), -1, 1)
    inv_word = int(f32_to_bf16(np.array([inv], dtype=np.float32))[0])
    return TernaryWeight(codes, Scale("BF16", inv_word.to_bytes(2, "little"), LinearClass.BITLINEAR))


def bitnet_gpu_quantize(weight: Dense, linear_class: LinearClass = LinearClass.AUTOBITLINEAR, scale_dtype: str = "BF16") -> TernaryWeight:
    """``quant_weight_int8`` of gpu/convert_checkpoint.py on the master cast to bf16.

    Its codes are onebitllms' (``s = 1/mean|W|`` and ``W * s`` rounded in bf16); the scale it stores
    is ``1.0 / s``, a float32 division rounded to bf16: mean|W| as the kernel multiplies it.
    """
    inverse = onebitllms_quantize(weight)
    with np.errstate(divide="ignore", over="ignore"):
        mean = np.float32(1.0) / np.float32(inverse.scale.item())
    return TernaryWeight(inverse.codes, Scale.of(float(mean), LinearClass.AUTOBITLINEAR, "BF16"))


def converter_fold(weight: Dense, linear_class: LinearClass = LinearClass.AUTOBITLINEAR, scale_dtype: str = "F32") -> TernaryWeight:
    """The codes and folded magnitude ``t / s`` that llama.cpp's and bitnet.cpp's converters compute.

    Both converters turn a bf16 tensor into fp32 before their ``weight_quant``, which returns the
    folded floats in the dtype it was given: the magnitude is ``1 / (1/mean)`` in fp32, then
    rounded once more to fp16 for an fp16 master.
    """
    dtype = "F16" if weight.dtype_name == "F16" else "F32"
    tw = quantize(weight, LinearClass.BITLINEAR, "F32")  # codes, and s = 1/mean in fp32
    with np.errstate(divide="ignore", over="ignore"):
        magnitude = np.float32(1.0) / np.float32(tw.scale.item())
    return TernaryWeight(tw.codes, Scale.of(float(magnitude), LinearClass.AUTOBITLINEAR, dtype))


def tq_block_d(codes: np.ndarray, magnitude: float, block: int) -> np.ndarray:
    """ggml's per-block fp16 ``d = max|x|`` of folded values ``codes x magnitude``, ``[rows, cols/block]``.

    A block of zeros has ``d = 0``; every other block has the magnitude rounded to fp16.
    """
    rows, cols = codes.shape
    used = (codes.reshape(rows, cols // block, block) != 0).any(-1)
    return np.where(used, np.float16(np.float32(magnitude)), np.float16(0))


_PY_FLOOR = 1e-5


def numpy_absmean(weight: Dense, linear_class: LinearClass = LinearClass.AUTOBITLINEAR, scale_dtype: str = "F32") -> TernaryWeight:
    """The codes and scale of bitnet.cpp's embedding converter (``quantize_to_i2_s``), bit for bit.

    It takes numpy's ``np.mean(np.abs(w))`` of the flattened float32 copy: a float32 sum in
    numpy's own (pairwise) order, divided by the count in float32; clamps it below at 1e-5; then
    ``np.round(w * (1 / mean))`` with the reciprocal in float32 (numpy 2's scalar rules) and
    clipped to [-1, 1]. The scale it stores is the (clamped) mean itself, in float32.
    """
    w = np.ascontiguousarray(weight.float32()).reshape(-1)
    mean = np.mean(np.abs(w))
    if float(mean) < _PY_FLOOR:  # max(mean, 1e-5) keeps the Python float: its reciprocal is a double
        mean, inv = np.float32(_PY_FLOOR), np.float32(1.0 / _PY_FLOOR)
    else:
        inv = np.float32(1.0) / np.float32(mean)
    with np.errstate(over="ignore", invalid="ignore"):
        codes = np.clip(np.rint(w * inv), -1, 1).astype(np.int8).reshape(weight.shape)
    return TernaryWeight(codes, Scale.from_mean(np.float32(mean), linear_class, scale_dtype))


def transformers_quantize(weight: Dense, linear_class: LinearClass, scale_dtype: str) -> TernaryWeight:
    """transformers' WeightQuant: :func:`bitconvert.ternary.quantize.quantize`."""
    return quantize(weight, linear_class, scale_dtype)
