"""How each producer of BitNet files turns a latent master weight into codes and a scale: one record each.

Every producer quantizes with absmean, but each rounds in its own precision and stores its own
kind of scale, so their files differ in a few codes and in the last bits of the scales. A recipe
reproduces one producer exactly; its record says what it computes, which outputs it can write and
the settings it forces, and :func:`check_recipe` is the one place a request is refused:

- ``transformers`` (bitconvert's default): fp32 ``s = 1/max(mean|W|, 1e-5)``, round-half-to-even,
  the scale expressed per ``linear_class`` (:func:`bitconvert.ternary.quantize.quantize`).
- ``onebitllms`` (onebitllms 0.0.4, the packer behind Falcon-E and Axolotl's BitNet recipe): the
  master is cast to bf16 first; ``1/mean|W|`` and ``W * s`` are computed and rounded in bf16;
  ``weight_scale = 1/mean|W|`` in bf16 (bitlinear meaning).
- ``llama.cpp`` (``convert_hf_to_gguf.py``): fp32 absmean, then the codes are folded back into
  floats ``t / s`` in the master's dtype (fp16 stays fp16, anything else becomes fp32); ggml's TQ
  quantizer then stores per block an fp16 ``d = max|x|`` (0 for an all-zero block).
- ``bitnet.cpp`` (``convert-hf-to-gguf-bitnet.py``): the same fold; its I2_S quantizer keeps the
  first non-zero magnitude as one fp32 scale per tensor (fp16-rounded for fp16 masters, 1bitLLM),
  its TL1/TL2 packer max|x|, the same value (it stops on fp16 masters; bitconvert does not).
- ``bitnet-gpu`` (microsoft/BitNet ``gpu/convert_checkpoint.py``, on the bf16 checkpoint its README
  converts): onebitllms' bf16 codes; the stored scale is ``1/s`` rounded to bf16 (mean|W|, multiplied).

Pure functions on numpy values: no files, no printing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..dtypes import Dense, f32_to_bf16, bf16_to_f32
from ..errors import UsageError
from .linear_class import LinearClass
from .quantize import MEAN_ABS_FLOOR, NonFiniteWeight, first_non_finite, mean_abs, quantize
from .scale import Scale
from .weight import TernaryWeight


class Recipe(str, enum.Enum):
    TRANSFORMERS = "transformers"
    ONEBITLLMS = "onebitllms"
    LLAMA_CPP = "llama.cpp"
    BITNET_CPP = "bitnet.cpp"
    BITNET_GPU = "bitnet-gpu"


#: ``(latent weight, linear_class, scale dtype name) -> TernaryWeight``
Quantizer = Callable[[Dense, LinearClass, str], TernaryWeight]


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


def _transformers(weight: Dense, linear_class: LinearClass, scale_dtype: str) -> TernaryWeight:
    return quantize(weight, linear_class, scale_dtype)


@dataclass(frozen=True)
class RecipeRecord:
    """What one producer does, as data: its quantizer, what it can write, what it forces."""

    recipe: Recipe
    producer: str
    quantize: Quantizer
    #: output format -> the GGUF types it writes there (None: every type the format takes)
    writes: dict[str, tuple[str, ...] | None]
    #: writer settings the producer always uses: option name -> (the value, in words for a refusal)
    forces: dict[str, tuple[Any, str]] = field(default_factory=dict)
    #: writer settings the producer uses where the user names none (they may still choose otherwise)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: GGUF only: where the scale goes ("blocks": fp16 d = max|x| per block; None: the writer's choice)
    gguf_scale_mode: str | None = None
    #: config.json keys the producer writes instead of bitconvert's quantization_config (hf-packed)
    config_keys: Callable[[tuple[str, ...]], dict[str, Any]] | None = None
    #: the README's words on its arithmetic, rounding and stored scale
    arithmetic: str = ""


def _onebitllms_config(not_converted: tuple[str, ...]) -> dict[str, Any]:
    """The keys onebitllms' quantize_to_1bit writes: no linear_class (so bitlinear), is_bitnet_config."""
    return {
        "is_bitnet_config": True,
        "pretraining_tp": 1,
        "quantization_config": {
            "modules_to_not_convert": list(not_converted) or ["lm_head"],
            "quant_method": "bitnet",
        },
    }


RECIPES: dict[Recipe, RecipeRecord] = {
    r.recipe: r
    for r in (
        RecipeRecord(
            Recipe.TRANSFORMERS, "transformers' WeightQuant", _transformers,
            {"hf-packed": None, "gguf": None, "bitnet-gpu": None},
            arithmetic="fp32 on the master's values, round half to even; scale per --linear-class and --scale-dtype",
        ),
        RecipeRecord(
            Recipe.ONEBITLLMS, "onebitllms 0.0.4 quantize_to_1bit", onebitllms_quantize, {"hf-packed": None},
            forces={"linear_class": (LinearClass.BITLINEAR, "bitlinear (1/mean|W|)"), "scale_dtype": ("BF16", "bf16 scales")},
            config_keys=_onebitllms_config,
            arithmetic="master cast to bf16; 1/mean|W| and W*s rounded to bf16; 1/mean|W| stored in bf16",
        ),
        RecipeRecord(
            Recipe.LLAMA_CPP, "llama.cpp convert_hf_to_gguf.py", converter_fold, {"gguf": ("tq1_0", "tq2_0")},
            gguf_scale_mode="blocks", defaults={"embed_type": "f16"},
            arithmetic="fp32 absmean, codes folded to t/s in the master dtype; fp16 d = max|x| per block",
        ),
        RecipeRecord(
            Recipe.BITNET_CPP, "bitnet.cpp convert-hf-to-gguf-bitnet.py", converter_fold, {"gguf": ("i2_s", "tl1", "tl2")},
            defaults={"embed_type": "f16"},
            arithmetic="fp32 absmean, codes folded to t/s in the master dtype; one fp32 scale per tensor",
        ),
        RecipeRecord(
            Recipe.BITNET_GPU, "microsoft/BitNet gpu/convert_checkpoint.py", bitnet_gpu_quantize, {"bitnet-gpu": None},
            arithmetic="master cast to bf16; 1/mean|W| and W*s rounded to bf16; 1/s stored in bf16 (mean|W|)",
        ),
    )
}  # fmt: skip


def recipes_for(fmt: str) -> tuple[Recipe, ...]:
    """The recipes that can write format ``fmt`` (the default first)."""
    return tuple(r for r, rec in RECIPES.items() if fmt in rec.writes)


def check_recipe(recipe: Recipe, fmt: str, options: dict[str, Any], stored_ternary: str | None, source: str) -> None:
    """Refuse, as a usage error, a recipe that cannot do what it names for this request.

    ``options``: the writer's chosen settings by option name (``gguf_type``, ``linear_class``,
    ``scale_dtype``; None where not given); ``stored_ternary``: the name of a tensor the source already
    holds as codes (a recipe quantizes float masters only), or None; ``source``: the source, for the message.
    """
    record = RECIPES[recipe]
    if fmt not in record.writes:
        raise UsageError(f"--recipe {recipe.value} does not write {fmt}; it writes {', '.join(record.writes)}")
    types = record.writes[fmt]
    if types is not None and options.get("gguf_type") not in types:
        raise UsageError(
            f"--recipe {recipe.value} writes {' or '.join(types)}, as {record.producer}; not {options.get('gguf_type')}"
        )
    for option, (value, words) in record.forces.items():
        given = options.get(option)
        if given is not None and given != value:
            shown = getattr(given, "value", given)
            raise UsageError(f"--recipe {recipe.value} stores {words}; it does not take --{option.replace('_', '-')} {str(shown).lower()}")
    if recipe is not Recipe.TRANSFORMERS and stored_ternary is not None:
        raise UsageError(
            f"--recipe {recipe.value} quantizes a float master, but {source} already holds ternary "
            f"codes (e.g. {stored_ternary}), which are never requantized: drop --recipe"
        )


def recipe_quantizer(recipe: Recipe) -> Quantizer:
    """The recipe's quantizer, refusing a NaN/Inf anywhere in the weight first (the default finds
    them from its mean, without a pass)."""
    quantizer = RECIPES[recipe].quantize
    if recipe is Recipe.TRANSFORMERS:
        return quantizer

    def checked(weight: Dense, linear_class: LinearClass, scale_dtype: str) -> TernaryWeight:
        if (found := first_non_finite(weight)) is not None:
            raise NonFiniteWeight(*found)
        return quantizer(weight, linear_class, scale_dtype)

    return checked


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
