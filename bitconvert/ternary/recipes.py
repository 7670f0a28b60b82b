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
  For embedding models the same name means bitnet.cpp's other converter,
  ``convert-bitnet-embedding-to-gguf.py``: numpy's float32 absmean over the flattened weight (numpy's
  own summation order), ``max(mean, 1e-5)``, codes ``clip(rint(W * float32(1/mean)), -1, 1)``, the
  scale ``mean`` in I2_S's tail; and its own GGUF layout (:class:`GGUFStyle`): F16 embeddings and
  norms, a norm's offset added in float32 before the F16 rounding, the master's floats as F16 for
  ``--outtype f16``, tensors in safetensors' name order, its own key set and vocabulary.
- ``bitnet-gpu`` (microsoft/BitNet ``gpu/convert_checkpoint.py``, on the bf16 checkpoint its README
  converts): onebitllms' bf16 codes; the stored scale is ``1/s`` rounded to bf16 (mean|W|, multiplied).

A producer that writes other models differently has one record per task (``RecipeRecord.by_task``,
keyed by ``Family.task``): :func:`recipe_record` picks the one for a model.

The records are data (importing them loads no numpy); the producers' arithmetic is in
:mod:`.producers`, pure functions on numpy values. No files, no printing.
"""

from __future__ import annotations

import enum
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UsageError
from .linear_class import LinearClass

if TYPE_CHECKING:
    from ..dtypes import Dense
    from .weight import TernaryWeight


#: the task names of ``Family.task`` (model/families.py) a record may be specific to
CAUSAL_LM, EMBEDDING = "causal-lm", "embedding"


class Recipe(str, enum.Enum):
    TRANSFORMERS = "transformers"
    ONEBITLLMS = "onebitllms"
    LLAMA_CPP = "llama.cpp"
    BITNET_CPP = "bitnet.cpp"
    BITNET_GPU = "bitnet-gpu"


#: ``(latent weight, linear_class, scale dtype name) -> TernaryWeight``
Quantizer = Callable[["Dense", LinearClass, str], "TernaryWeight"]

#: the producers' arithmetic, in numpy (:mod:`.producers`): imported when a weight is quantized, so
#: that reading or refusing a ``--recipe`` costs no numpy
_PRODUCERS = f"{__package__}.producers"
_FROM_PRODUCERS = ("onebitllms_quantize", "bitnet_gpu_quantize", "converter_fold", "tq_block_d", "numpy_absmean")


def __getattr__(name: str) -> Any:
    if name in _FROM_PRODUCERS:
        return getattr(importlib.import_module(_PRODUCERS), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class GGUFStyle:
    """How a producer lays out a GGUF file beyond its quantization, for a writer to copy.

    The default is bitconvert's own: every key llama.cpp reads plus exact records, tensors in model
    order, norms F32 (with their offset added, checked exact), ``--embed-type`` for the embedding.
    """

    #: the key set written ("bitconvert", or a producer's own, by name: formats/gguf/writer.py's table)
    metadata: str = "bitconvert"
    #: "model": embedding, layers in order, final norm; "files": each source file in name order, its
    #: tensors sorted by name (safetensors' ``keys()``)
    tensor_order: str = "model"
    #: GGML type name of every float tensor that is not a quantized linear ("f16"); None: the writer's
    dense_type: str | None = None
    #: a float ``--gguf-type`` stores quantized linears as "dequantized" codes x mean|W|, or "latent":
    #: the master's own floats
    float_linears: str = "dequantized"
    #: vocabulary keys the producer overrides, by GGUF architecture: key -> value (e.g. a fixed EOS id)
    vocab_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class RecipeRecord:
    """What one producer does, as data: its quantizer, what it can write, what it forces."""

    recipe: Recipe
    producer: str
    #: the quantizer's name in :mod:`.producers`
    quantizer: str
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
    #: how it lays out a GGUF file (its own keys, tensor order, dense types)
    gguf_style: GGUFStyle = field(default_factory=GGUFStyle)
    #: the same producer's record for models of another task (``Family.task``): task -> record
    by_task: dict[str, RecipeRecord] = field(default_factory=dict)

    @property
    def quantize(self) -> Quantizer:
        return getattr(importlib.import_module(_PRODUCERS), self.quantizer)


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
            Recipe.TRANSFORMERS, "transformers' WeightQuant", "transformers_quantize",
            {"hf-packed": None, "gguf": None, "bitnet-gpu": None},
            arithmetic="fp32 on the master's values, round half to even; scale per --linear-class and --scale-dtype",
        ),
        RecipeRecord(
            Recipe.ONEBITLLMS, "onebitllms 0.0.4 quantize_to_1bit", "onebitllms_quantize", {"hf-packed": None},
            forces={"linear_class": (LinearClass.BITLINEAR, "bitlinear (1/mean|W|)"), "scale_dtype": ("BF16", "bf16 scales")},
            config_keys=_onebitllms_config,
            arithmetic="master cast to bf16; 1/mean|W| and W*s rounded to bf16; 1/mean|W| stored in bf16",
        ),
        RecipeRecord(
            Recipe.LLAMA_CPP, "llama.cpp convert_hf_to_gguf.py", "converter_fold", {"gguf": ("tq1_0", "tq2_0")},
            gguf_scale_mode="blocks", defaults={"embed_type": "f16"},
            arithmetic="fp32 absmean, codes folded to t/s in the master dtype; fp16 d = max|x| per block",
        ),
        RecipeRecord(
            Recipe.BITNET_CPP, "bitnet.cpp convert-hf-to-gguf-bitnet.py", "converter_fold", {"gguf": ("i2_s", "tl1", "tl2")},
            defaults={"embed_type": "f16"},
            arithmetic="fp32 absmean, codes folded to t/s in the master dtype; one fp32 scale per tensor",
            by_task={EMBEDDING: RecipeRecord(
                Recipe.BITNET_CPP, "bitnet.cpp convert-bitnet-embedding-to-gguf.py", "numpy_absmean",
                {"gguf": ("i2_s", "f16")},
                forces={"embed_type": ("f16", "F16 token embeddings"), "i2s_layout": ("x86", "the x86 I2_S layout")},
                arithmetic="numpy fp32 absmean of the flattened weight, max(mean, 1e-5); scale mean|W| in I2_S's tail; "
                           "F16 embeddings and norms (a norm's offset added in fp32 first)",
                gguf_style=GGUFStyle(
                    metadata="bitnet-embedding-converter", tensor_order="files", dense_type="f16",
                    float_linears="latent",
                    # its Qwen3 path forces the EOS of the real vocabulary and appends it
                    vocab_overrides={"qwen3": {"eos_token_id": 151643, "add_eos_token": True}},
                ),
            )},
        ),
        RecipeRecord(
            Recipe.BITNET_GPU, "microsoft/BitNet gpu/convert_checkpoint.py", "bitnet_gpu_quantize", {"bitnet-gpu": None},
            arithmetic="master cast to bf16; 1/mean|W| and W*s rounded to bf16; 1/s stored in bf16 (mean|W|)",
        ),
    )
}  # fmt: skip


def recipes_for(fmt: str) -> tuple[Recipe, ...]:
    """The recipes that can write format ``fmt`` for some task (the default first)."""
    return tuple(
        r for r, rec in RECIPES.items() if fmt in rec.writes or any(fmt in v.writes for v in rec.by_task.values())
    )


def recipe_record(recipe: Recipe, task: str = CAUSAL_LM) -> RecipeRecord:
    """What ``recipe``'s producer does for a model of ``task`` (its record for that task, where it has one)."""
    record = RECIPES[recipe]
    return record.by_task.get(task, record)


def check_recipe(
    recipe: Recipe, fmt: str, options: dict[str, Any], stored_ternary: str | None, source: str, task: str = CAUSAL_LM
) -> None:
    """Refuse, as a usage error, a recipe that cannot do what it names for this request.

    ``options``: the writer's chosen settings by option name (``gguf_type``, ``linear_class``,
    ``scale_dtype``; None where not given); ``stored_ternary``: the name of a tensor the source already
    holds as codes (a recipe quantizes float masters only), or None; ``source``: the source, for the message.
    """
    record = recipe_record(recipe, task)
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


def recipe_quantizer(recipe: Recipe, task: str = CAUSAL_LM) -> Quantizer:
    """The recipe's quantizer (for a model of ``task``), refusing a NaN/Inf anywhere in the weight
    first (the default finds them from its mean, without a pass)."""
    quantizer = recipe_record(recipe, task).quantize
    if recipe is Recipe.TRANSFORMERS:
        return quantizer

    from .quantize import NonFiniteWeight, first_non_finite

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
