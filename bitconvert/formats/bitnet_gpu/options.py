"""The ``bitnet-gpu`` writer's options, apart from the writer so that the command line is built from
them without importing it (see ``formats/options.py``). The recipe choices are written out here;
tests check them against ``ternary.recipes.recipes_for("bitnet-gpu")``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..options import dtype_field, option, parse_flag, recipe_option, write_options

if TYPE_CHECKING:
    from ...ternary.recipes import Recipe


@write_options
class BitnetGPUOptions:
    recipe: Recipe = recipe_option(
        "bitnet-gpu",
        ("transformers", "bitnet-gpu"),
        "How a master is quantized: transformers (fp32 absmean as --to hf-packed; mean|W| rounded once to bf16) "
        "or bitnet-gpu (gpu/convert_checkpoint.py's bf16 arithmetic: its files byte for byte).",
    )
    allow_lossy: bool = option(
        False,
        "--allow-lossy",
        "Write although a stored scale does not survive bf16, or the GPU model computes another activation "
        "(a warning per loss).",
        parse_flag,
    )
    #: a dtype name ("BF16"); None: each dense tensor's own, and the model's for model_state_fp16.pt
    dtype: str | None = dtype_field(
        "dtype of the dense tensors and of model_state_fp16.pt's weights. Default: the source's."
    )
