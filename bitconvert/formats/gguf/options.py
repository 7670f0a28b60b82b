"""The ``gguf`` writer's options, apart from the writer so that the command line is built from them
without importing it (see ``formats/options.py``). Choices are written out here; tests check them
against the tables they name (``ternary.recipes``, ``i2s_layouts.LAYOUTS``, ``kernel_config.PRESET_NAMES``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..options import option, parse_flag, recipe_option, write_options

if TYPE_CHECKING:
    from ...ternary.recipes import Recipe

WEIGHT_TYPES = ("tq2_0", "tq1_0", "i2_s", "tl1", "tl2", "f16", "bf16", "f32")  # what --gguf-type takes
EMBED_TYPES = ("f16", "bf16", "f32", "q8_0")  # what --embed-type takes
I2S_LAYOUTS = ("x86", "x86-rows", "arm")  # i2s_layouts.LAYOUTS
#: bitnet.cpp's preset kernel configurations (kernel_config.PRESET_NAMES)
KERNEL_PRESETS = ("bitnet_b1_58-large", "bitnet_b1_58-3B", "Llama3-8B-1.58-100B-tokens")
TL_TYPES = ("tl1", "tl2")


def _parse_kernel_config(value: Any) -> Any:
    """A path to kernel_config.ini; from Python, a ready ``kernel_config.KernelConfig`` too."""
    from .kernel_config import KernelConfig

    return value if isinstance(value, KernelConfig) else Path(value)


def _parse_preset(value: Any) -> str:
    from .kernel_config import preset_name

    return preset_name(value)


@write_options
class GGUFOptions:
    gguf_type: str = option("tq2_0", "--gguf-type", "Weight type of quantized linears.", choices=WEIGHT_TYPES)
    embed_type: str | None = option(
        None, "--embed-type",
        "Type of token_embd (and an untied output); default: the source's own float type (f16, bf16 or f32), "
        "f16 for any other.", choices=EMBED_TYPES,
    )  # fmt: skip
    allow_fallback: bool = option(
        False, "--allow-fallback", "Write quantized linears a ternary type cannot hold as F16.", parse_flag
    )
    no_tokenizer: bool = option(
        False, "--no-tokenizer", "Write no tokenizer (else an unreadable tokenizer.json is an error).", parse_flag
    )
    recipe: Recipe = recipe_option(
        "gguf",
        ("transformers", "llama.cpp", "bitnet.cpp"),
        "How a master is quantized: transformers (exact fp32 scale), llama.cpp (tq types: fp16 d = max|x| "
        "per block, as convert_hf_to_gguf.py) or bitnet.cpp (i2_s, tl1, tl2: its converter's folded scale; for "
        "embedding models i2_s or f16, byte for byte as convert-bitnet-embedding-to-gguf.py).",
    )
    allow_lossy: bool = option(
        False, "--allow-lossy",
        "Write norms and recipe-chosen float tensors although their GGUF type rounds some values (e.g. a "
        "producer's F16 norms with an offset); a warning per tensor.",
        parse_flag,
    )  # fmt: skip
    i2s_layout: str | None = option(
        None, "--i2s-layout", "I2_S byte layout (bitnet.cpp build): x86 (default; official files), x86-rows or arm.",
        choices=I2S_LAYOUTS,
    )  # fmt: skip
    kernel_config: Path | None = option(
        None, "--kernel-config", "TL1/TL2: the kernel_config.ini of the bitnet.cpp build that will run the file "
        "(its include/kernel_config.ini): the tile each weight shape is packed with.", _parse_kernel_config,
        metavar="FILE",
    )  # fmt: skip
    kernel_preset: str | None = option(
        None, "--kernel-preset", "TL1/TL2: one of bitnet.cpp's preset kernel configurations (preset_kernels/), "
        "for a build made with it.", _parse_preset, choices=KERNEL_PRESETS,
    )  # fmt: skip
