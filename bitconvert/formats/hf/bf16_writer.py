"""Writing ``hf-bf16``: float weights in HF safetensors, ternary ones dequantized, their stored scales recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...model.checkpoint import Checkpoint, as_dense
from ...model.config import QuantConfig, QuantMode
from ...io.safetensors import PlannedTensor
from ...ternary.records import SCALES_KEY, VALUES_EXACT, VALUES_KEY, VALUES_ONLINE, encode_record, encode_records
from ...ternary import LinearClass, TernaryWeight
from .. import Progress, WriteReport, register_writer
from ..options import dtype_field, max_shard_size_field, option, parse_flag
from .bf16 import NAME
from .common import copy_side_files, ordered_names, write_json, write_safetensors_dir


@dataclass(frozen=True)
class HFBF16Options:
    dtype: torch.dtype | None = dtype_field(
        "dtype of the written weights: bf16, f16 or f32; default: the source's, per tensor"
    )
    max_shard_size: int = max_shard_size_field()
    online_exact: bool = option(
        False,
        "--online-exact",
        "write codes x mean|W|/p (p: non-zero fraction) so that online quantization gives back the packed layer",
        parse_flag,
    )


class HFBF16Writer:
    name = NAME
    writes_directory = True
    Options = HFBF16Options

    def write(self, ckpt: Checkpoint, out: Path, options: HFBF16Options, progress: Progress) -> WriteReport:
        cfg = ckpt.config
        dtype = options.dtype or ckpt.model_dtype()  # what config.json states
        report = WriteReport(NAME)
        names = ordered_names(cfg, ckpt.tensors)
        plan = [PlannedTensor(n, options.dtype or ckpt.source_dtype(n), ckpt.tensors[n].shape) for n in names]
        hints = {n: ckpt.tensors[n].load_scale() for n in names if ckpt.tensors[n].load_scale is not None}
        online = options.online_exact
        metadata = {"format": "pt"}
        if hints:
            metadata[SCALES_KEY] = encode_records({n: encode_record(s) for n, s in hints.items()})
            metadata[VALUES_KEY] = VALUES_ONLINE if online else VALUES_EXACT
        dequantized = 0

        def produce(t: PlannedTensor) -> torch.Tensor:
            nonlocal dequantized
            value = ckpt.tensors[t.name].load()
            if not isinstance(value, TernaryWeight):
                return as_dense(value, t.dtype)
            dequantized += 1
            return value.online_master(t.dtype) if online else value.dequantize(t.dtype)

        write_safetensors_dir(out, plan, produce, options.max_shard_size, metadata, progress, report)
        src_q = cfg.quantization or QuantConfig()
        # transformers quantizes float masters on the fly only through AutoBitLinear's online mode.
        quant = QuantConfig(
            linear_class=LinearClass.AUTOBITLINEAR,
            mode=QuantMode.ONLINE,
            modules_to_not_convert=src_q.modules_to_not_convert,
            use_rms_norm=src_q.use_rms_norm,
            rms_norm_eps=src_q.rms_norm_eps,
        )
        write_json(out / "config.json", cfg.to_hf_dict(quant, str(dtype).removeprefix("torch.")))
        report.files += ["config.json"] + copy_side_files(ckpt.side_files, out)
        if dequantized:
            report.ternary_sources = {"dequantized": dequantized}
        return report


register_writer(HFBF16Writer())
