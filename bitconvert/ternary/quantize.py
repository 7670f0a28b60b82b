"""Absmean quantization of latent weights, bit for bit as transformers' ``WeightQuant`` (numpy, no torch).

The recipe, in float32: ``s = 1 / max(mean|W|, 1e-5)``, codes ``clamp(round(W * s), -1, 1)`` with
round-half-to-even. ``mean|W|`` is a float32 sum and depends on its order: torch's own order is
reproduced (:mod:`.fast.summation`). bf16 weights get their codes by comparing bit patterns with one
threshold (:mod:`.fast.bf16_codes`), without a float32 copy; other dtypes run the arithmetic in
cache-sized chunks.

Also here: telling a float tensor that already *is* codes x one magnitude (``unpack`` output) from a
latent one, so that it is recovered, never requantized (:func:`as_ternary`).
"""

from __future__ import annotations

import sys

import numpy as np

from ..dtypes import EXPONENT_BITS, Dense
from ..errors import BitconvertError
from .fast.bf16_codes import CHUNK, codes_into, pack_planes, zero_threshold
from .fast.summation import Release, abs_sum, summation_order
from .linear_class import LinearClass
from .packing import VALUES_PER_BYTE, pack_codes
from .records import ScaleRecord
from .scale import Scale
from .weight import TernaryWeight

#: transformers and the BitNet papers clamp mean|W| from below at this value (a float32 in torch's clamp)
MEAN_ABS_FLOOR = np.float32(1e-5)


class NonFiniteWeight(BitconvertError, ValueError):
    """A latent weight holds NaN or Inf: absmean quantization would give a NaN/Inf scale.

    A project error (exit 1) even where a caller does not name the tensor; callers that know it
    re-raise a CheckpointError naming the tensor and its file.
    """

    def __init__(self, index: tuple[int, ...], value: float) -> None:
        self.index = index
        self.value = value
        super().__init__(f"non-finite value {value} at index {list(index)}: cannot quantize")


def first_non_finite(weight: Dense) -> tuple[tuple[int, ...], float] | None:
    """Index and value of the first NaN/Inf in ``weight`` (row-major order), or None."""
    flat = weight.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        values = flat.rows(start, start + CHUNK).float32()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = start + int(bad[0])
            return tuple(int(v) for v in np.unravel_index(i, weight.shape)), float(values[bad[0]])
    return None


def mean_abs(weight: Dense, release: Release | None = None) -> np.float32:
    """mean|W| in float32, bit-identical to torch's ``weight.float().abs().mean()``."""
    n = weight.size
    if not n:
        return np.float32(np.nan)
    order = summation_order()
    flat = np.ascontiguousarray(weight.data).reshape(-1)
    if order is None:  # a platform whose order is not reproduced: numpy's own sum
        total = np.abs(weight.float32()).sum(dtype=np.float32)
    else:
        total = abs_sum(flat, weight.dtype_name, *order, release=release)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.float32(total) / np.float32(n)


def _scale_of(weight: Dense, release: Release | None = None) -> tuple[np.float32, np.float32, int | None]:
    """(mean|W| floored, s = 1/mean|W|, the zero threshold where the bf16 fast path applies)."""
    m = mean_abs(weight, release)
    # one cheap test per tensor: any NaN or Inf makes the mean non-finite (an overflowing sum of
    # finite values does too, so look for the element before blaming one)
    if not np.isfinite(m) and weight.size and (found := first_non_finite(weight)) is not None:
        raise NonFiniteWeight(*found)
    m = max(m, MEAN_ABS_FLOOR) if m == m else m
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / np.float32(m)
    fast = weight.dtype_name == "BF16" and np.isfinite(m) and sys.byteorder == "little"
    return np.float32(m), inv, (zero_threshold(inv) if fast else None)


def bf16_scale_threshold(weight: Dense, release: Release | None = None) -> tuple[np.float32, int | None]:
    """(mean|W| floored, as :func:`absmean_quantize` returns it; the zero threshold of the codes, or
    None where the bf16 bit-pattern path does not apply). Raises NonFiniteWeight as it does.
    ``release`` is told of each stretch of the flat weight once summed."""
    m, _, threshold = _scale_of(weight, release)
    return m, threshold


def absmean_quantize(weight: Dense) -> tuple[np.ndarray, np.float32]:
    """int8 codes and float32 mean|W| (floored) of a latent weight, as ``WeightQuant`` computes them."""
    m, inv, threshold = _scale_of(weight)
    flat = np.ascontiguousarray(weight.data).reshape(-1)
    codes = np.empty(flat.shape, dtype=np.int8)
    if threshold is not None:
        codes_into(flat, threshold, codes.view(np.uint8))
        return codes.reshape(weight.shape), m
    dense = Dense(flat, weight.dtype_name)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, flat.size, CHUNK):
            x = dense.rows(start, start + CHUNK).float32()
            x *= inv
            np.rint(x, out=x)
            np.clip(x, -1, 1, out=x)
            codes[start : start + x.size] = x
    return codes.reshape(weight.shape), m


def quantize(weight: Dense, linear_class: LinearClass, scale_dtype: str = "BF16") -> TernaryWeight:
    """Quantize a latent float weight and express its scale in ``linear_class``'s convention."""
    codes, m = absmean_quantize(weight)
    return TernaryWeight(codes, Scale.from_mean(m, linear_class, scale_dtype))


def quantize_packed(
    weight: Dense, linear_class: LinearClass, scale_dtype: str = "BF16", release: Release | None = None
) -> tuple[np.ndarray, Scale]:
    """``pack_codes(quantize(weight).codes)`` and its scale, with the same bits, in one pass.

    For bf16 weights each row block of four code planes is quantized and packed while in cache:
    no int8 codes or float32 copy of the weight exist at any time. ``release``: see :class:`PackedRows`.
    """
    packing = PackedRows(weight, linear_class, scale_dtype, release)
    return packing.rows(0, packing.packed_rows), packing.scale


class PackedRows:
    """:func:`quantize_packed` of one weight a block of packed rows at a time, so that neither the
    packed weight nor (for a mapped one) its values are ever held whole.

    Making it takes the scale (one pass over the weight); :meth:`rows` then packs the rows asked for.
    ``release`` (flat indices of the weight) is told of the values each pass has finished reading:
    a weight mapped from its file hands those pages back (see ``io.safetensors.page_release``).
    """

    def __init__(
        self, weight: Dense, linear_class: LinearClass, scale_dtype: str = "BF16", release: Release | None = None
    ) -> None:
        if len(weight.shape) != 2 or weight.shape[0] % VALUES_PER_BYTE:
            raise ValueError(f"quantize_packed expects [R, C] with R a multiple of 4, got {weight.shape}")
        rows, cols = weight.shape
        self.packed_rows, self.release = rows // VALUES_PER_BYTE, release
        m, _, self.threshold = _scale_of(weight, release)
        self.whole: np.ndarray | None = None
        if self.threshold is None:  # not bf16, or no single threshold: the arithmetic, then packing
            tw = quantize(weight, linear_class, scale_dtype)
            self.whole, self.scale = pack_codes(tw.codes), tw.scale
            return
        self.planes = np.ascontiguousarray(weight.data).reshape(VALUES_PER_BYTE, self.packed_rows, cols)
        self.scale = Scale.from_mean(m, linear_class, scale_dtype)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Packed rows ``start:stop`` (uint8 ``[stop - start, C]``)."""
        if self.whole is not None:
            return self.whole[start:stop]
        out = np.empty((stop - start, self.planes.shape[2]), dtype=np.uint8)
        assert self.threshold is not None
        pack_planes(self.planes, self.threshold, out, self.release, start)
        return out


def recover_ternary(weight: Dense) -> TernaryWeight | None:
    """If ``weight`` is already codes x one magnitude (what ``unpack`` writes), that ternary weight.

    Its scale is the magnitude itself (autobitlinear, in ``weight``'s dtype). None when the tensor
    takes more than one non-zero magnitude, is all zeros, holds a NaN or Inf, or is not float.
    Requantizing such a tensor would rescale it by the fraction of non-zero codes; recovering it is
    exact. Decided on the stored words (|x| is the word without its sign bit), a chunk at a time.
    """
    if weight.size == 0 or not weight.is_float:
        return None
    word, exponent = EXPONENT_BITS[weight.dtype_name]
    sign = word(1 << (8 * np.dtype(word).itemsize - 1))
    bits = np.ascontiguousarray(weight.data).reshape(-1).view(word)
    # A latent master fails within its first values; look there before scanning everything.
    head = bits[:4096] & ~sign
    nonzero = head[head != 0]
    if nonzero.size and nonzero.max() != nonzero.min():
        return None
    magnitude = word(0)
    for start in range(0, bits.size, CHUNK):
        part = bits[start : start + CHUNK] & ~sign
        top = part.max()
        if top >= exponent:  # inf or nan
            return None
        if top != magnitude and magnitude and top:
            return None
        magnitude = max(magnitude, top)
        if np.count_nonzero((part != 0) & (part != magnitude)):
            return None
    if not magnitude:
        return None
    codes = np.zeros(bits.shape, dtype=np.int8)
    codes[bits == magnitude] = 1
    codes[bits == (magnitude | sign)] = -1
    data = int(magnitude).to_bytes(np.dtype(word).itemsize, "little")
    return TernaryWeight(codes.reshape(weight.shape), Scale(weight.dtype_name, data, LinearClass.AUTOBITLINEAR))


def matches_record(weight: Dense, record: ScaleRecord) -> TernaryWeight | None:
    """The ternary weight ``weight`` was written from, while it is still exactly that: codes x the
    recorded scale's magnitude in ``weight``'s dtype (codes x mean|W| / p for an online record; the
    record's written magnitude where it has one); else None. All zeros match any record."""
    if not weight.is_float:
        return None
    found = recover_ternary(weight)
    if found is None:
        word = EXPONENT_BITS[weight.dtype_name][0]
        magnitudes = np.ascontiguousarray(weight.data).reshape(-1).view(word) << word(1)  # the sign shifted out
        if not np.any(magnitudes):
            return TernaryWeight(np.zeros(weight.shape, dtype=np.int8), record.scale)
        return None
    kept = found.with_scale(record.scale)
    magnitude = found.scale.item()
    if record.written is not None:
        want = record.written_item() if record.written[0] == weight.dtype_name else None
    elif record.online:
        want = kept.online_magnitude(weight.dtype_name)
    else:
        want = record.scale.magnitude(weight.dtype_name)
    return kept if want == magnitude else None


def as_ternary(
    value: Dense | TernaryWeight, linear_class: LinearClass, scale_dtype: str, record: ScaleRecord | None = None,
    quantizer=None, online: bool = False,
) -> tuple[TernaryWeight, str]:
    """The ternary form of a quantized linear weight's value, and how it was obtained.

    ``"kept"``: already ternary (stored codes, or floats still exactly codes x their ``record``'s
    scale), the scale re-expressed only where class or dtype differ; ``"recovered"``: floats that
    are exactly codes x one magnitude; ``"quantized"``: a latent weight quantized by ``quantizer``
    (``(Dense, LinearClass, dtype) -> TernaryWeight``, default :func:`quantize`). Floats written for
    online quantization (``online``, or an online record they no longer match) are latent: quantized,
    never recovered.
    """
    if isinstance(value, TernaryWeight):
        return value.with_scale(value.scale.to(linear_class, scale_dtype)), "kept"
    if record is not None and (kept := matches_record(value, record)) is not None:
        return kept.with_scale(kept.scale.to(linear_class, scale_dtype)), "kept"
    if online or (record is not None and record.online):
        tw = quantize(value, LinearClass.AUTOBITLINEAR, "F32")
        return tw.with_scale(tw.scale.to(linear_class, scale_dtype)), "quantized"
    found = recover_ternary(value)
    if found is not None:
        return found.with_scale(found.scale.to(linear_class, scale_dtype)), "recovered"
    return (quantizer or quantize)(value, linear_class, scale_dtype), "quantized"
