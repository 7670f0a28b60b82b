"""The ``gguf`` writer's options, apart from the writer so that the command line is built from them
without importing it (see ``formats/options.py``). Choices are written out here; tests check them
against the tables they name (``ternary.recipes``, ``i2s_layouts.LAYOUTS``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..options import option, parse_flag, recipe_option, write_options

if TYPE_CHECKING:
    from ...ternary.recipes import Recipe

WEIGHT_TYPES = ("tq2_0", "tq1_0", "i2_s", "f16", "bf16", "f32")  # what --gguf-type takes
EMBED_TYPES = ("f16", "bf16", "f32", "q8_0")  # what --embed-type takes
I2S_LAYOUTS = ("x86", "x86-rows", "arm")  # i2s_layouts.LAYOUTS


@write_options
class GGUFOptions:
    gguf_type: str = option("tq2_0", "--gguf-type", "Weight type of quantized linears.", choices=WEIGHT_TYPES)
    embed_type: str = option("f16", "--embed-type", "Type of token_embd (and an untied output).", choices=EMBED_TYPES)
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
        "per block, as convert_hf_to_gguf.py) or bitnet.cpp (i2_s: its converter's folded scale; for embedding "
        "models i2_s or f16, byte for byte as convert-bitnet-embedding-to-gguf.py).",
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
