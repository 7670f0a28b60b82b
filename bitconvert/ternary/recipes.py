"""How each producer of BitNet files turns a latent master weight into codes and a scale.

Every producer quantizes with absmean, but each rounds in its own precision and stores its own
kind of scale, so their files differ in a few codes and in the last bits of the scales. A recipe
reproduces one producer exactly:

- ``transformers`` (bitconvert's default): fp32 ``s = 1/max(mean|W|, 1e-5)``, round-half-to-even,
  the scale expressed per ``linear_class`` (see :func:`bitconvert.ternary.quantize`).
- ``onebitllms`` (onebitllms 0.0.4, the packer behind Falcon-E and Axolotl's BitNet recipe): the
  master is cast to bf16 first; ``1/mean|W|`` and ``W * s`` are computed and rounded in bf16;
  ``weight_scale = 1/mean|W|`` in bf16 (bitlinear meaning).
- ``llama.cpp`` (``convert_hf_to_gguf.py``): fp32 absmean, then the codes are folded back into
  floats ``t / s`` in the master's dtype (fp16 stays fp16, anything else becomes fp32); ggml's TQ
  quantizer then stores per 256-value block an fp16 ``d = max|x|`` (0 for an all-zero block).
- ``bitnet.cpp`` (``convert-hf-to-gguf-bitnet.py``): the same fold; its I2_S quantizer keeps the
  first non-zero magnitude as one fp32 scale per tensor (fp16-rounded for fp16 masters, 1bitLLM).

Pure functions on tensors: no files, no printing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import torch

from ..model.checkpoint import Value, as_ternary
from . import (
    MEAN_ABS_FLOOR,
    LinearClass,
    NonFiniteWeight,
    TernaryScale,
    TernaryWeight,
    first_non_finite,
    quantize,
    recover_ternary,
)

#: ggml's TQ block: 256 values along a row, one fp16 ``d`` each
TQ_BLOCK = 256


class Recipe(str, enum.Enum):
    TRANSFORMERS = "transformers"
    ONEBITLLMS = "onebitllms"
    LLAMA_CPP = "llama.cpp"
    BITNET_CPP = "bitnet.cpp"


#: the recipes each writer takes
HF_PACKED_RECIPES = (Recipe.TRANSFORMERS, Recipe.ONEBITLLMS)
GGUF_RECIPES = (Recipe.TRANSFORMERS, Recipe.LLAMA_CPP, Recipe.BITNET_CPP)


@dataclass(frozen=True)
class RecipeInfo:
    """What a recipe does, in words, for the README table and ``verify --reproduce`` notes."""

    recipe: Recipe
    producer: str
    formats: str
    arithmetic: str
    rounding: str
    scale: str
    config: str


INFO = {
    r.recipe: r
    for r in (
        RecipeInfo(
            Recipe.TRANSFORMERS, "transformers' WeightQuant (bitconvert's default)", "hf-packed, gguf (all types)",
            "fp32 on the master's values", "half to even", "mean|W| or 1/mean|W| per --linear-class, --scale-dtype",
            "quantization_config with linear_class",
        ),
        RecipeInfo(
            Recipe.ONEBITLLMS, "onebitllms 0.0.4 quantize_to_1bit", "hf-packed",
            "bf16: master cast to bf16, 1/mean|W| and W*s rounded to bf16", "half to even (on bf16 products)",
            "1/mean|W| in bf16 (bitlinear)", "is_bitnet_config: true; quantization_config without linear_class",
        ),
        RecipeInfo(
            Recipe.LLAMA_CPP, "llama.cpp convert_hf_to_gguf.py", "gguf tq1_0, tq2_0",
            "fp32 absmean, codes folded to t/s in the master dtype (f16, else f32)", "half to even, then half away",
            "fp16 d = max|x| per 256-value block (0 for an all-zero block); no .scale tensor", "none",
        ),
        RecipeInfo(
            Recipe.BITNET_CPP, "bitnet.cpp convert-hf-to-gguf-bitnet.py", "gguf i2_s",
            "fp32 absmean, codes folded to t/s in the master dtype (f16, else f32)", "half to even",
            "one fp32 scale per tensor: the folded magnitude (fp16-rounded for fp16 masters)", "none",
        ),
    )
}  # fmt: skip


def onebitllms_quantize(weight: torch.Tensor) -> TernaryWeight:
    """onebitllms' ``_weight_quant`` on the master cast to bf16: every step rounded in bf16."""
    w = weight.to(torch.bfloat16)
    inv = 1.0 / w.abs().mean().clamp(min=MEAN_ABS_FLOOR)  # a bf16 scalar, as in onebitllms
    codes = (w * inv).round().clamp(-1, 1).to(torch.int8)
    return TernaryWeight(codes, TernaryScale(inv.reshape(1), LinearClass.BITLINEAR))


def converter_fold(weight: torch.Tensor) -> TernaryWeight:
    """The codes and folded magnitude ``t / s`` that llama.cpp's and bitnet.cpp's converters compute.

    Both converters turn a bf16 tensor into fp32 before their ``weight_quant``, which returns the
    folded floats in the dtype it was given: the magnitude is ``1 / (1/mean)`` in fp32, then
    rounded once more to fp16 for an fp16 master.
    """
    dtype = torch.float16 if weight.dtype == torch.float16 else torch.float32
    w = weight.float()
    s = 1.0 / w.abs().mean().clamp(min=MEAN_ABS_FLOOR)
    codes = (w * s).round().clamp(-1, 1)
    magnitude = (torch.ones(1) / s).to(dtype)  # the value every code +1 becomes after `/ s` and the cast
    return TernaryWeight(codes.to(torch.int8), TernaryScale(magnitude, LinearClass.AUTOBITLINEAR))


def tq_block_d(codes: torch.Tensor, magnitude: torch.Tensor, block: int = TQ_BLOCK) -> torch.Tensor:
    """ggml's per-block fp16 ``d = max|x|`` of folded values ``codes x magnitude``, ``[rows, cols/block]``.

    A block of zeros has ``d = 0``; every other block has the magnitude rounded to fp16.
    """
    rows, cols = codes.shape
    used = codes.reshape(rows, cols // block, block).ne(0).any(-1)
    d = magnitude.reshape(()).float().to(torch.float16)
    return torch.where(used, d, torch.zeros((), dtype=torch.float16))


def quantize_with(
    weight: torch.Tensor, recipe: Recipe, linear_class: LinearClass, scale_dtype: torch.dtype
) -> TernaryWeight:
    """A latent weight quantized as ``recipe``'s producer does, its scale in that producer's form.

    ``transformers`` honours ``linear_class`` and ``scale_dtype``; the others store what their
    producer stores (see the module docstring) and ignore both.
    """
    if recipe is not Recipe.TRANSFORMERS and (found := first_non_finite(weight)) is not None:
        raise NonFiniteWeight(*found)  # the default path finds these from its mean, without a pass
    if recipe is Recipe.ONEBITLLMS:
        return onebitllms_quantize(weight)
    if recipe in (Recipe.LLAMA_CPP, Recipe.BITNET_CPP):
        return converter_fold(weight)
    return quantize(weight, linear_class, scale_dtype)


def recipe_ternary(
    value: Value, recipe: Recipe, linear_class: LinearClass, scale_dtype: torch.dtype
) -> tuple[TernaryWeight, str]:
    """Like :func:`bitconvert.model.checkpoint.as_ternary`, quantizing latent weights with ``recipe``.

    A value that is already ternary (stored codes, or floats that are exactly codes x one
    magnitude) is never requantized: it is kept, whatever the recipe, and reported as
    ``"kept"`` / ``"recovered"`` so the writer can say that the recipe did not apply to it.
    """
    if recipe is Recipe.TRANSFORMERS or isinstance(value, TernaryWeight) or recover_ternary(value) is not None:
        return as_ternary(value, linear_class, scale_dtype)
    return quantize_with(value, recipe, linear_class, scale_dtype), "quantized"


def recipe_quantizer(recipe: Recipe) -> Callable[[Value, LinearClass, torch.dtype], tuple[TernaryWeight, str]]:
    """:func:`recipe_ternary` with ``recipe`` bound, in :func:`bitconvert.model.checkpoint.as_ternary`'s shape."""
    return lambda value, linear_class, scale_dtype: recipe_ternary(value, recipe, linear_class, scale_dtype)


def parse_recipe(value: object, allowed: tuple[Recipe, ...], flag: str = "--recipe") -> Recipe:
    """A recipe by name, refused (ValueError naming the ones allowed) when this writer does not take it."""
    if isinstance(value, Recipe):
        recipe = value
    else:
        try:
            recipe = Recipe(str(value).lower())
        except ValueError:
            recipe = None  # type: ignore[assignment]
    if recipe not in allowed:
        raise ValueError(f"{flag} must be one of {', '.join(r.value for r in allowed)}, got {value!r}")
    return recipe
