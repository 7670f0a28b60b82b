"""Writing ``hf-packed`` (transformers' 2-bit layout): codes packed four to a byte plus one weight_scale each."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ...model.checkpoint import Checkpoint, TensorEntry, as_dense, entry_as_ternary, quantizing
from ...model.config import QuantConfig, QuantMode
from ...errors import CheckpointError, UsageError
from ...ternary.recipes import HF_PACKED_RECIPES, Recipe, recipe_quantizer
from ...io.safetensors import PlannedTensor
from ...ternary import VALUES_PER_BYTE, LinearClass, TernaryScale, pack_codes, quantize_packed, recover_ternary
from .. import Progress, WriteReport, register_writer
from ..options import dtype_field, dtype_parser, linear_class_field, max_shard_size_field, option, recipe_field
from .common import copy_side_files, ordered_names, write_json, write_safetensors_dir
from .packed import NAME, scale_name


@dataclass(frozen=True)
class HFPackedOptions:
    linear_class: LinearClass | None = linear_class_field()
    scale_dtype: torch.dtype = option(
        torch.bfloat16, "--scale-dtype", "dtype of each weight_scale: bf16 or f32", dtype_parser("--scale-dtype", ("bf16", "f32"))
    )
    dtype: torch.dtype | None = dtype_field(
        "dtype of dense tensors (embedding, norms): bf16, f16 or f32; default: the source's, per tensor"
    )
    max_shard_size: int = max_shard_size_field()
    recipe: Recipe = recipe_field(
        HF_PACKED_RECIPES,
        "how a master is quantized: transformers (fp32, default) or onebitllms (bf16 arithmetic, "
        "bf16 bitlinear scales, onebitllms' config keys)",
    )


def _check_recipe(ckpt: Checkpoint, options: HFPackedOptions) -> None:
    """A producer recipe quantizes a float master: refused where it cannot apply as that producer would."""
    if options.recipe is Recipe.TRANSFORMERS:
        return
    stored = [n for n, e in ckpt.tensors.items() if e.ternary]
    if stored:
        raise UsageError(
            f"--recipe {options.recipe.value} quantizes a float master, but {ckpt.path} ({ckpt.format}) already holds "
            f"ternary codes (e.g. {stored[0]}), which are never requantized: drop --recipe"
        )
    if options.linear_class is LinearClass.AUTOBITLINEAR:
        raise UsageError("--recipe onebitllms stores 1/mean|W| (bitlinear); it does not take --linear-class autobitlinear")
    if options.scale_dtype != torch.bfloat16:
        raise UsageError("--recipe onebitllms stores bf16 scales; it does not take --scale-dtype f32")


def _packed(entry: TensorEntry, linear_class: LinearClass, options: HFPackedOptions) -> tuple[torch.Tensor, TernaryScale, str]:
    """Packed codes, scale and how they were obtained (see ``as_ternary``).

    A master quantized with the default recipe is quantized and packed in one pass; anything
    else goes through its ternary form (kept, recovered, or quantized by ``options.recipe``).
    """
    value = entry.load()
    fused = options.recipe is Recipe.TRANSFORMERS and isinstance(value, torch.Tensor) and value.dim() == 2
    if fused and recover_ternary(value) is None:
        with quantizing(entry):
            packed, scale = quantize_packed(value, linear_class, options.scale_dtype)
        return packed, scale, "quantized"
    tw, source = entry_as_ternary(entry, value, linear_class, options.scale_dtype, recipe_quantizer(options.recipe))
    return pack_codes(tw.codes), tw.scale, source


class HFPackedWriter:
    name = NAME
    writes_directory = True
    Options = HFPackedOptions

    def write(self, ckpt: Checkpoint, out: Path, options: HFPackedOptions, progress: Progress) -> WriteReport:
        cfg = ckpt.config
        dtype = options.dtype or ckpt.model_dtype()  # what config.json states
        _check_recipe(ckpt, options)
        onebitllms = options.recipe is Recipe.ONEBITLLMS
        linear_class = options.linear_class or ckpt.source_linear_class() or LinearClass.AUTOBITLINEAR
        if onebitllms:
            linear_class = LinearClass.BITLINEAR
        report = WriteReport(NAME)
        plan: list[PlannedTensor] = []
        for name in ordered_names(cfg, ckpt.tensors):
            e = ckpt.tensors[name]
            if ckpt.is_quantized_linear(name):
                rows, cols = e.shape
                if rows % VALUES_PER_BYTE:
                    raise CheckpointError(e.source, f"{rows} output rows, not a multiple of 4: cannot be packed", name)
                plan.append(PlannedTensor(name, torch.uint8, (rows // VALUES_PER_BYTE, cols)))
                plan.append(PlannedTensor(scale_name(name), options.scale_dtype, (1,)))
            else:
                plan.append(PlannedTensor(name, options.dtype or ckpt.source_dtype(name), e.shape))

        pending_scales: dict[str, torch.Tensor] = {}
        how = Counter()

        def produce(t: PlannedTensor) -> torch.Tensor:
            if t.name in pending_scales:
                return pending_scales.pop(t.name)
            entry = ckpt.tensors[t.name]
            if not ckpt.is_quantized_linear(t.name):
                return as_dense(entry.load(), t.dtype)
            packed, scale, source = _packed(entry, linear_class, options)
            how[source] += 1
            pending_scales[scale_name(t.name)] = scale.value.reshape(1)
            return packed

        write_safetensors_dir(out, plan, produce, options.max_shard_size, {"format": "pt"}, progress, report)
        src_q = cfg.quantization or QuantConfig()
        quant = QuantConfig(
            linear_class=linear_class,
            mode=QuantMode.OFFLINE,
            modules_to_not_convert=src_q.modules_to_not_convert,
            use_rms_norm=src_q.use_rms_norm,
            rms_norm_eps=src_q.rms_norm_eps,
        )
        config = cfg.to_hf_dict(quant, str(dtype).removeprefix("torch."))
        if onebitllms:
            config.update(_onebitllms_config(src_q.modules_to_not_convert))
        write_json(out / "config.json", config)
        report.files += ["config.json"] + copy_side_files(ckpt.side_files, out)
        report.ternary_sources = dict(how)
        report.details["linear_class"] = linear_class.value
        report.details["recipe"] = options.recipe.value
        untouched = sum(n for how_, n in how.items() if how_ != "quantized")
        if options.recipe is not Recipe.TRANSFORMERS and untouched:
            report.warnings.append(
                f"{untouched} tensor(s) were already ternary floats (codes x one magnitude): kept as they are, "
                f"not requantized with --recipe {options.recipe.value}"
            )
        return report


def _onebitllms_config(not_converted: tuple[str, ...]) -> dict:
    """The keys onebitllms' quantize_to_1bit writes: no linear_class (so bitlinear), is_bitnet_config."""
    return {
        "is_bitnet_config": True,
        "pretraining_tp": 1,
        "quantization_config": {
            "modules_to_not_convert": list(not_converted) or ["lm_head"],
            "quant_method": "bitnet",
        },
    }


register_writer(HFPackedWriter())
