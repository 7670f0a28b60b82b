"""Ternary math for BitNet b1.58 weights: absmean quantization, scale conventions, 2-bit packing.

Pure functions on tensors: no files, no printing. Every other module that needs to know how a
ternary weight is quantized, scaled or packed asks this one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from .fast.bf16_codes import CHUNK, bf16_bits, codes_into, pack_planes, zero_threshold
from ..errors import BitconvertError
from .linear_class import LinearClass  # re-exported: defined apart so that configs load without torch
from .fast.summation import abs_sum_bf16, calibrated_lanes

#: transformers and the BitNet papers clamp mean|W| from below at this value.
MEAN_ABS_FLOOR = 1e-5
#: Packed HF layout: four 2-bit codes per byte, along the output (row) dimension.
VALUES_PER_BYTE = 4


@dataclass(frozen=True)
class TernaryScale:
    """A per-tensor scale exactly as stored: a one-element tensor in its on-disk dtype and its meaning."""

    value: torch.Tensor
    linear_class: LinearClass

    def __post_init__(self) -> None:
        if self.value.numel() != 1:
            raise ValueError(f"a ternary scale has one element, got shape {tuple(self.value.shape)}")

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    def item(self) -> float:
        return float(self.value.reshape(()).double())

    @property
    def multiplier(self) -> float:
        """The factor applied to ``codes @ x``, i.e. mean|W| (float64, from the stored value)."""
        v = self.item()
        return v if self.linear_class is LinearClass.AUTOBITLINEAR else 1.0 / v

    def magnitude(self, dtype: torch.dtype) -> torch.Tensor:
        """mean|W| rounded once into ``dtype`` (0-dim), from the stored value in float64."""
        v = self.value.reshape(()).double()
        return (v if self.linear_class is LinearClass.AUTOBITLINEAR else 1.0 / v).to(dtype)

    def is_valid(self) -> bool:
        v = self.item()
        return v > 0 and v != float("inf") and v == v

    def to(self, linear_class: LinearClass, dtype: torch.dtype) -> "TernaryScale":
        """Re-express this scale; exact unless the class flips or the dtype narrows."""
        if linear_class is self.linear_class:
            value = self.value.reshape(1).to(dtype)
        else:
            value = (1.0 / self.value.reshape(1).double()).to(dtype)
        return TernaryScale(value, linear_class)

    def same_as(self, other: "TernaryScale") -> bool:
        return (
            self.linear_class is other.linear_class
            and self.dtype == other.dtype
            and torch.equal(self.value.reshape(1), other.value.reshape(1))
        )


@dataclass(frozen=True)
class TernaryWeight:
    """A quantized linear weight: codes in {-1, 0, 1} (int8, ``[out, in]``) and its one scale."""

    codes: torch.Tensor
    scale: TernaryScale

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes x mean|W|: the weight the layer effectively multiplies with (exact in ``dtype``)."""
        return self.codes.to(dtype) * self.scale.magnitude(dtype)

    def online_magnitude(self, dtype: torch.dtype) -> torch.Tensor:
        """mean|W| / p rounded once into ``dtype`` (0-dim), p the fraction of non-zero codes.

        Online quantization (transformers' AutoBitLinear ``online`` mode, any absmean QAT) derives
        the scale from the float values as mean|values|. For codes x mean|W| that is p x mean|W|,
        which shrinks the layer by p; for codes x (mean|W| / p) it is mean|W| again (up to one
        rounding in ``dtype``), and the codes come back unchanged since |codes / p| >= 1 clamps to 1.
        """
        nonzero = int(torch.count_nonzero(self.codes))
        v = self.scale.magnitude(torch.float64)
        if nonzero:
            v = v * (self.codes.numel() / nonzero)
        return v.to(dtype)

    def online_master(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes x (mean|W| / p): floats that online absmean quantization maps back to this weight."""
        return self.codes.to(dtype) * self.online_magnitude(dtype)


def _reference_mean_abs(weight: torch.Tensor) -> torch.Tensor:
    absolute = weight.float()
    if absolute.data_ptr() == weight.data_ptr():
        absolute = absolute.clone()  # never mutate the caller's tensor
    return absolute.abs_().mean()


def mean_abs(weight: torch.Tensor) -> torch.Tensor:
    """mean|W| in float32, bit-identical to ``weight.float().abs().mean()``.

    For bf16 weights torch's summation order is reproduced in cache-sized chunks
    (:mod:`bitconvert.ternary.fast.summation`), so no float32 copy of the weight is made; other dtypes, and
    builds whose order cannot be reproduced, use torch itself.
    """
    if weight.dtype == torch.bfloat16 and weight.numel():
        threads = torch.get_num_threads()
        lanes = calibrated_lanes(threads)
        if lanes is not None:
            total = abs_sum_bf16(bf16_bits(weight).reshape(-1), threads, lanes)
            return torch.tensor(float(total), dtype=torch.float32).div_(weight.numel())
    return _reference_mean_abs(weight)


def _scale_of(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(mean|W| floored, s = 1/mean|W|, the zero threshold where the bf16 fast path applies)."""
    m = mean_abs(weight)
    # one cheap test per tensor: any NaN or Inf makes the mean non-finite (an overflowing sum of
    # finite values does too, so look for the element before blaming one)
    if not bool(torch.isfinite(m)) and (found := first_non_finite(weight)) is not None:
        raise NonFiniteWeight(*found)
    m = m.clamp(min=MEAN_ABS_FLOOR)
    inv = 1.0 / m
    fast = weight.dtype == torch.bfloat16 and bool(torch.isfinite(m)) and sys.byteorder == "little"
    return m, inv, (zero_threshold(inv) if fast else None)


def bf16_scale_threshold(weight: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """(mean|W| floored, as :func:`~bitconvert.ternary.absmean_quantize` returns it; the zero
    threshold of the codes, or None where the bf16 bit-pattern path does not apply and
    :func:`~bitconvert.ternary.quantize` must be used). Raises NonFiniteWeight as it does."""
    m, _, threshold = _scale_of(weight)
    return m, threshold


class NonFiniteWeight(BitconvertError, ValueError):
    """A latent weight holds NaN or Inf: absmean quantization would give a NaN/Inf scale.

    A project error (exit 1) even where a caller does not name the tensor; callers that know it
    re-raise a CheckpointError naming the tensor and its file.
    """

    def __init__(self, index: tuple[int, ...], value: float) -> None:
        self.index = index
        self.value = value
        super().__init__(f"non-finite value {value} at index {list(index)}: cannot quantize")


def first_non_finite(weight: torch.Tensor) -> tuple[tuple[int, ...], float] | None:
    """Index and value of the first NaN/Inf in ``weight`` (row-major order), or None."""
    bad = torch.nonzero(~torch.isfinite(weight.reshape(-1)))
    if not bad.numel():
        return None
    flat = int(bad[0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), weight.shape)) if weight.dim() else ()
    return index, float(weight.reshape(-1)[flat])


def absmean_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and mean|W| of a latent weight, bit-identical to transformers' ``WeightQuant``.

    The arithmetic follows it step by step in fp32: ``s = 1 / max(mean|W|, 1e-5)``, codes
    ``clamp(round(W * s), -1, 1)`` with round-half-to-even. Returns (int8 codes, fp32 mean|W|).
    The mean is torch's own (same summation order, see :func:`mean_abs`); bf16 codes come from
    comparing bit patterns with a threshold found by running the recipe on every bf16 value, other
    dtypes run the recipe in cache-sized chunks through one reused buffer.
    """
    m, inv, threshold = _scale_of(weight)
    flat = weight.reshape(-1)
    codes = torch.empty(flat.shape, dtype=torch.int8)
    if threshold is not None:
        codes_into(bf16_bits(flat), threshold, codes.numpy().view(np.uint8))
        return codes.reshape(weight.shape), m
    buf = torch.empty(min(CHUNK, flat.numel()), dtype=torch.float32)
    for start in range(0, flat.numel(), CHUNK):
        n = min(CHUNK, flat.numel() - start)
        x = buf[:n]
        x.copy_(flat[start : start + n])
        x.mul_(inv).round_().clamp_(-1, 1)
        codes[start : start + n].copy_(x)
    return codes.reshape(weight.shape), m


def _scale_value(m: torch.Tensor, linear_class: LinearClass, scale_dtype: torch.dtype) -> TernaryScale:
    if linear_class is LinearClass.AUTOBITLINEAR:
        value = m.reshape(1)
    else:
        value = (1.0 / m).reshape(1)  # fp32 reciprocal, the ``s`` of WeightQuant
    return TernaryScale(value.to(scale_dtype), linear_class)


def quantize(
    weight: torch.Tensor, linear_class: LinearClass, scale_dtype: torch.dtype = torch.bfloat16
) -> TernaryWeight:
    """Quantize a latent float weight and express its scale in ``linear_class``'s convention."""
    codes, m = absmean_quantize(weight)
    return TernaryWeight(codes, _scale_value(m, linear_class, scale_dtype))


def quantize_packed(
    weight: torch.Tensor, linear_class: LinearClass, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, TernaryScale]:
    """``pack_codes(quantize(weight).codes)`` and its scale, with the same bits, in one pass.

    For bf16 weights each row block of four code planes is quantized and packed while in cache:
    no int8 codes or float32 copy of the weight exist at any time.
    """
    if weight.dim() != 2 or weight.shape[0] % VALUES_PER_BYTE:
        raise ValueError(f"quantize_packed expects [R, C] with R a multiple of 4, got {tuple(weight.shape)}")
    m, _, threshold = _scale_of(weight)
    if threshold is None:
        tw = quantize(weight, linear_class, scale_dtype)
        return pack_codes(tw.codes), tw.scale
    rows, cols = weight.shape
    planes = bf16_bits(weight).reshape(VALUES_PER_BYTE, rows // VALUES_PER_BYTE, cols)
    packed = torch.empty(rows // VALUES_PER_BYTE, cols, dtype=torch.uint8)
    pack_planes(planes, threshold, packed.numpy())
    return packed, _scale_value(m, linear_class, scale_dtype)


def recover_ternary(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """If ``weight`` is already codes x one magnitude (what ``unpack`` writes), return both.

    Returns (int8 codes, the magnitude as a one-element tensor in ``weight``'s dtype), or None
    when the tensor takes more than one non-zero magnitude or is all zeros. Requantizing such a
    tensor would rescale it by the fraction of non-zero codes; recovering it is exact.
    """
    if weight.numel() == 0 or not weight.is_floating_point():
        return None
    # A latent master fails within its first values; look there before scanning everything
    # (in numpy: torch's masked indexing starts its thread team, which then spins for the cores).
    head = np.abs(weight.reshape(-1)[:4096].float().numpy())
    nonzero = head[head != 0]
    if nonzero.size and nonzero.max() != nonzero.min():
        return None
    magnitude = weight.abs().amax()
    if not bool(magnitude > 0) or not bool(torch.isfinite(magnitude)):
        return None
    a = weight.abs()
    if not bool(((a == magnitude) | (a == 0)).all()):
        return None
    return torch.sign(weight).to(torch.int8), magnitude.reshape(1)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack int codes {-1,0,1} ``[R, C]`` into the HF row-block layout, uint8 ``[R/4, C]``.

    Byte ``[r, c]`` holds ``codes[r + i*R/4, c] + 1`` in bits ``2i..2i+1`` (lowest first).
    The input is not modified.
    """
    if codes.dim() != 2:
        raise ValueError(f"pack_codes expects a 2-D tensor, got shape {tuple(codes.shape)}")
    rows, cols = codes.shape
    if rows % VALUES_PER_BYTE:
        raise ValueError(f"rows ({rows}) must be a multiple of {VALUES_PER_BYTE} to pack")
    c = (codes.to(torch.int8) + 1).view(torch.uint8).reshape(VALUES_PER_BYTE, rows // VALUES_PER_BYTE, cols)
    packed = c[3].clone()
    for plane in (2, 1, 0):  # in place: one pass per plane, no temporaries
        packed <<= 2
        packed |= c[plane]
    return packed


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 ``[R/4, C]`` to int8 codes ``[4*R/4, C]``.

    Code 3 (invalid) comes back as 2; call :func:`first_invalid_code` to reject it first.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_codes expects a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    planes = torch.stack([(packed >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)])
    return planes.reshape(-1, packed.shape[1]).to(torch.int8) - 1


def first_invalid_code(packed: torch.Tensor) -> tuple[int, int] | None:
    """Position (unpacked row, column) of the first 2-bit field holding 3, or None if all are valid."""
    bad = (packed & (packed >> 1)) & 0x55  # a field is 3 exactly when both its bits are set
    if not bool(bad.any()):
        return None
    r, c = (int(v) for v in torch.nonzero(bad)[0])
    byte = int(bad[r, c])
    plane = next(i for i in range(VALUES_PER_BYTE) if byte & (1 << (2 * i)))
    return r + plane * packed.shape[0], c


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization (last dim): (int8 values, fp32 scale ``127/max|x|``)."""
    xf = x.float()
    scale = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=MEAN_ABS_FLOOR)
    q = (xf * scale).round().clamp(-128, 127).to(torch.int8)
    return q, scale


def ternary_stats(codes: torch.Tensor) -> dict[str, float]:
    """Fractions of -1, 0 and +1 among the codes."""
    n = codes.numel() or 1
    return {
        "minus": int((codes == -1).sum()) / n,
        "zero": int((codes == 0).sum()) / n,
        "plus": int((codes == 1).sum()) / n,
    }
