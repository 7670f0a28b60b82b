"""Writing ``hf-bf16``: float weights in HF safetensors, ternary ones dequantized, their stored scales recorded."""

from __future__ import annotations

from pathlib import Path

from ...dtypes import Dense
from ...io.output import FileSlice
from ...io.safetensors import PlannedTensor
from ...model.checkpoint import Checkpoint, Kind, as_dense, dense_rows_known
from ...model.config import QuantConfig, QuantMode
from ...ternary import LinearClass, TernaryWeight
from ...ternary.records import SCALES_KEY, VALUES_EXACT, VALUES_KEY, VALUES_ONLINE, encode_record, encode_records
from .. import Progress, WriteReport, register_writer
from .bf16 import NAME
from .common import (
    Piece,
    copies_as_stored,
    copy_side_files,
    dense_piece,
    ordered_names,
    write_json,
    write_safetensors_dir,
)
from .options import HFBF16Options


def _recorded_scales(ckpt: Checkpoint, names: list[str]) -> dict[str, list[str]]:
    """The exact stored scale of every weight written as floats from a ternary one: a TERNARY entry's
    own (read without its codes), a LATENT entry's record (checked when it is read back)."""
    records = {}
    for n in names:
        e = ckpt.tensors[n]
        if e.kind is Kind.TERNARY:
            records[n] = encode_record(e.stored().scale or e.load().scale)
        elif e.record is not None:
            records[n] = encode_record(e.record.scale)
    return records


class HFBF16Writer:
    name = NAME
    Options = HFBF16Options
    #: it never quantizes: floats are written as they are, ternary weights dequantized
    kernels = ()

    def write(self, ckpt: Checkpoint, out: Path, options: HFBF16Options, progress: Progress) -> WriteReport:
        cfg = ckpt.config
        dtype = options.dtype or ckpt.model_dtype()  # what config.json states
        report = WriteReport(NAME)
        names = ordered_names(cfg, ckpt.tensors)
        plan = [PlannedTensor(n, options.dtype or ckpt.source_dtype(n), ckpt.tensors[n].shape) for n in names]
        records = _recorded_scales(ckpt, names)
        online = options.online_exact
        metadata = {"format": "pt"}
        if records:
            metadata[SCALES_KEY] = encode_records(records)
            metadata[VALUES_KEY] = VALUES_ONLINE if online else VALUES_EXACT
        dequantized = 0

        def produce(piece: Piece) -> Dense | FileSlice:
            nonlocal dequantized
            t = piece.tensor
            if not piece.whole:  # a block of rows of a large float tensor (the embedding)
                return dense_piece(ckpt.tensors[t.name], piece)
            value = ckpt.tensors[t.name].load()
            if not isinstance(value, TernaryWeight):
                return as_dense(value, t.dtype_name)
            dequantized += 1
            return value.online_master(t.dtype_name) if online else value.dequantize(t.dtype_name)

        def by_rows(t: PlannedTensor) -> bool:
            return dense_rows_known(ckpt.tensors[t.name])

        write_safetensors_dir(
            out, plan, produce, options.max_shard_size, metadata, progress, report, by_rows, copies_as_stored(ckpt)
        )
        src_q = cfg.quantization or QuantConfig()
        # transformers quantizes float masters on the fly only through AutoBitLinear's online mode.
        quant = QuantConfig(
            linear_class=LinearClass.AUTOBITLINEAR,
            mode=QuantMode.ONLINE,
            modules_to_not_convert=src_q.modules_to_not_convert,
            use_rms_norm=src_q.use_rms_norm,
            rms_norm_eps=src_q.rms_norm_eps,
        )
        write_json(out / "config.json", cfg.to_hf_dict(quant, dtype))
        report.files += ["config.json"] + copy_side_files(ckpt.side_files, out, ckpt.side_folder())
        if dequantized:
            report.ternary_sources = {"dequantized": dequantized}
        return report


register_writer(HFBF16Writer())
