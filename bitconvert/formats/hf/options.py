"""The write options of ``hf-packed`` and ``hf-bf16``, apart from their writers so that the command
line is built from them without importing a writer (see ``formats/options.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..options import (
    dtype_field,
    dtype_parser,
    linear_class_field,
    max_shard_size_field,
    option,
    parse_flag,
    recipe_option,
    write_options,
)

if TYPE_CHECKING:
    from ...ternary import LinearClass
    from ...ternary.recipes import Recipe


@write_options
class HFPackedOptions:
    linear_class: LinearClass | None = linear_class_field()
    scale_dtype: str = option(
        "bf16", "--scale-dtype", "dtype of each weight_scale.", dtype_parser("--scale-dtype", ("bf16", "f32")),
        choices=("bf16", "f32"),
    )  # fmt: skip
    dtype: str | None = dtype_field(
        "dtype of dense tensors (embedding, norms). Default: the source's, per tensor."
    )
    max_shard_size: int = max_shard_size_field()
    recipe: Recipe = recipe_option(
        "hf-packed",
        ("transformers", "onebitllms"),
        "How a master is quantized: transformers (fp32) or onebitllms (bf16 arithmetic, bf16 bitlinear "
        "scales, onebitllms' config keys).",
    )


@write_options
class HFBF16Options:
    dtype: str | None = dtype_field("dtype of the written weights. Default: the source's, per tensor.")
    max_shard_size: int = max_shard_size_field()
    online_exact: bool = option(
        False,
        "--online-exact",
        "Write codes x mean|W|/p (p: non-zero fraction), so that online quantization (transformers' "
        "online mode) gives back the packed layer instead of scaling it by p.",
        parse_flag,
    )
