"""Writing ``hf-packed`` (transformers' 2-bit layout): codes packed four to a byte plus one weight_scale each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...dtypes import Dense
from ...errors import CheckpointError
from ...io.output import FileSlice
from ...io.safetensors import PlannedTensor, page_release
from ...model.checkpoint import (
    Checkpoint,
    Kind,
    TensorEntry,
    as_dense,
    dense_rows_known,
    entry_as_ternary,
    quantizing,
)
from ...model.config import QuantConfig, QuantMode
from ...ternary import VALUES_PER_BYTE, LinearClass, Scale, pack_codes, recover_ternary
from ...ternary.quantize import PackedRows
from ...ternary.recipes import RECIPES, Recipe, check_recipe, recipe_quantizer
from .. import Progress, WriteReport, register_writer
from .common import (
    Piece,
    copies_as_stored,
    copy_side_files,
    dense_piece,
    ordered_names,
    write_json,
    write_safetensors_dir,
)
from .options import HFPackedOptions
from .packed import NAME, scale_name

#: ``rows(start, stop)``: packed rows of one quantized weight
Rows = Callable[[int, int], np.ndarray]


def _packed(entry: TensorEntry, linear_class: LinearClass, options: HFPackedOptions) -> tuple[Rows, Scale, str]:
    """Packed rows on demand, the scale and how they were obtained (see ``as_ternary``).

    A master quantized with the default recipe is quantized and packed a block of rows at a time
    after one pass for its scale, its mapped pages handed back as they are read; anything else goes
    through its ternary form (kept, recovered, or quantized by ``options.recipe``).
    """
    value = entry.load()
    fused = options.recipe is Recipe.TRANSFORMERS and entry.kind is Kind.LATENT and entry.record is None
    if fused and isinstance(value, Dense) and len(value.shape) == 2 and recover_ternary(value) is None:
        with quantizing(entry):  # read and never written: a mapped weight's pages go back as they are read
            packing = PackedRows(value, linear_class, options.scale_dtype, page_release(value.data))
        return packing.rows, packing.scale, "quantized"
    tw, source = entry_as_ternary(entry, value, linear_class, options.scale_dtype, recipe_quantizer(options.recipe))
    packed = pack_codes(tw.codes)
    return lambda start, stop: packed[start:stop], tw.scale, source


class HFPackedWriter:
    name = NAME
    Options = HFPackedOptions
    #: the compiled loops quantizing and packing a bf16 master runs (see convert: compiled ahead)
    kernels = ("block_abs_sums", "pack_rows")

    def write(self, ckpt: Checkpoint, out: Path, options: HFPackedOptions, progress: Progress) -> WriteReport:
        cfg = ckpt.config
        dtype = options.dtype or ckpt.model_dtype()  # what config.json states
        record = RECIPES[options.recipe]
        chosen = {"linear_class": options.linear_class, "scale_dtype": options.scale_dtype}
        check_recipe(options.recipe, NAME, chosen, ckpt.first_stored_ternary(), f"{ckpt.path} ({ckpt.format})")
        linear_class = options.linear_class or ckpt.source_linear_class() or LinearClass.AUTOBITLINEAR
        if "linear_class" in record.forces:
            linear_class = record.forces["linear_class"][0]
        report = WriteReport(NAME)
        plan: list[PlannedTensor] = []
        for name in ordered_names(cfg, ckpt.tensors):
            e = ckpt.tensors[name]
            if ckpt.is_quantized_linear(name):
                rows, cols = e.shape
                if rows % VALUES_PER_BYTE:
                    raise CheckpointError(e.source, f"{rows} output rows, not a multiple of 4: cannot be packed", name)
                plan.append(PlannedTensor(name, "U8", (rows // VALUES_PER_BYTE, cols)))
                plan.append(PlannedTensor(scale_name(name), options.scale_dtype, (1,)))
            else:
                plan.append(PlannedTensor(name, options.dtype or ckpt.source_dtype(name), e.shape))

        pending_scales: dict[str, Dense] = {}
        how = Counter()
        packing: list[Rows] = []  # the quantized weight whose blocks of packed rows are being made

        def produce(piece: Piece) -> Dense | FileSlice:
            t = piece.tensor
            if t.name in pending_scales:
                return pending_scales.pop(t.name)
            entry = ckpt.tensors[t.name]
            if not ckpt.is_quantized_linear(t.name):
                if not piece.whole:  # a block of rows of a large dense tensor (the embedding)
                    return dense_piece(entry, piece)
                return as_dense(entry.load(), t.dtype_name)
            if piece.start == 0:  # the weight's first block: its scale, and how its rows are made
                rows, scale, source = _packed(entry, linear_class, options)
                packing[:] = [rows]
                how[source] += 1
                pending_scales[scale_name(t.name)] = Dense.from_bytes(scale.data, scale.dtype_name, (1,))
            packed = Dense(packing[0](piece.start, piece.stop), "U8")
            if piece.stop == t.shape[0]:
                packing.clear()
            return packed

        def by_rows(t: PlannedTensor) -> bool:  # quantized weights too: a block of packed rows at a time
            entry = ckpt.tensors.get(t.name)
            return entry is not None and (ckpt.is_quantized_linear(t.name) or dense_rows_known(entry))

        write_safetensors_dir(
            out, plan, produce, options.max_shard_size, {"format": "pt"}, progress, report, by_rows, copies_as_stored(ckpt)
        )
        src_q = cfg.quantization or QuantConfig()
        quant = QuantConfig(
            linear_class=linear_class,
            mode=QuantMode.OFFLINE,
            modules_to_not_convert=src_q.modules_to_not_convert,
            use_rms_norm=src_q.use_rms_norm,
            rms_norm_eps=src_q.rms_norm_eps,
        )
        config = cfg.to_hf_dict(quant, dtype)
        if record.config_keys is not None:
            config.update(record.config_keys(src_q.modules_to_not_convert))
        write_json(out / "config.json", config)
        report.files += ["config.json"] + copy_side_files(ckpt.side_files, out, ckpt.side_folder())
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


register_writer(HFPackedWriter())
