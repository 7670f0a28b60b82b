"""``hf-bf16``: float master weights in HF safetensors (e.g. microsoft/bitnet-b1.58-2B-4T-bf16).

A master's linear weights are latent floats that BitNet quantizes on the fly. ``unpack`` output is
a master too, whose weights are exactly codes x mean|W| (or, with the writer option
``online_master``, codes x mean|W| / p, which online quantization maps back to the packed layer);
it records each original stored scale in the safetensors metadata so a later ``pack`` gets the
scale back bit for bit even where the reciprocal convention (bitlinear) could not be recovered
from the float values alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoint import Checkpoint, TensorEntry, as_dense, check_tensor_set, is_ignored_tensor
from ...config import QuantConfig, QuantMode
from ...errors import CheckpointError
from ...safetensors_io import DTYPE_NAMES, FLOAT_DTYPES, PlannedTensor, SafetensorsFile, StoredTensor
from ...scale_records import (
    SCALES_KEY,
    VALUES_EXACT,
    VALUES_KEY,
    VALUES_ONLINE,
    decode_records,
    encode_record,
    encode_records,
)
from ...ternary import LinearClass, NonFiniteWeight, TernaryScale, TernaryWeight, quantize, recover_ternary
from .. import Progress, WriteReport, register_reader, register_writer
from ..options import dtype_field, max_shard_size_field, option, parse_flag
from .common import (
    copy_side_files,
    looks_like_hf,
    ordered_names,
    read_hf_directory,
    write_json,
    write_safetensors_dir,
)
from .packed import is_packed_directory

NAME = "hf-bf16"


def _load_master(
    st: SafetensorsFile, t: StoredTensor, hint: TernaryScale | None, online: bool
) -> torch.Tensor | TernaryWeight:
    w = st.read(t.name)
    found = recover_ternary(w)
    if found is None:
        if hint is not None and not bool(w.any()):
            return TernaryWeight(torch.zeros(w.shape, dtype=torch.int8), hint)
        return w
    codes, magnitude = found
    if hint is not None:
        # Trust the recorded scale only while the values are still exactly what unpack wrote from it.
        kept = TernaryWeight(codes, hint)
        if torch.equal(magnitude.reshape(()), kept.online_magnitude(w.dtype) if online else hint.magnitude(w.dtype)):
            return kept
    if online:
        # Values meant for online quantization: their scale is mean|values|, not the magnitude.
        try:
            return quantize(w, LinearClass.AUTOBITLINEAR, torch.float32)
        except NonFiniteWeight as exc:
            raise CheckpointError(st.path, str(exc), t.name) from None
    return w


class HFBF16Reader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return looks_like_hf(path) and not is_packed_directory(read_hf_directory(path))

    def read(self, path: Path) -> Checkpoint:
        d = read_hf_directory(path)
        cfg = d.config
        notes = list(d.notes)
        hints: dict[str, TernaryScale] = {}
        values = d.metadata_value(VALUES_KEY) or VALUES_EXACT
        if values not in (VALUES_EXACT, VALUES_ONLINE):
            raise CheckpointError(path, f"unknown {VALUES_KEY} {values!r} in the safetensors metadata")
        online = values == VALUES_ONLINE
        raw_hints = d.metadata_value(SCALES_KEY)
        if raw_hints:
            hints = {n: r.scale for n, r in decode_records(raw_hints, path).items()}
        entries: dict[str, TensorEntry] = {}
        for name in ordered_names(cfg, d.stored):
            st, t = d.stored[name]
            if is_ignored_tensor(name):
                notes.append(f"ignored buffer {name}")
                continue
            if t.dtype not in FLOAT_DTYPES:
                raise CheckpointError(st.path, f"a master checkpoint holds float tensors, found {DTYPE_NAMES[t.dtype]}", name)
            hint = hints.get(name) if cfg.is_quantized_linear(name) else None
            entries[name] = TensorEntry(
                name,
                t.shape,
                t.dtype,
                False,
                str(st.path),
                lambda st=st, t=t, h=hint: _load_master(st, t, h, online),
                (lambda h=hint: h) if hint is not None else None,
                stored=DTYPE_NAMES[t.dtype],
            )
        info = {"float_values": values}
        classes = {s.linear_class for s in hints.values()}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        ckpt = Checkpoint(NAME, path, cfg, entries, d.side_files, notes, info)
        check_tensor_set(ckpt)
        return ckpt


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


register_reader(HFBF16Reader())
register_writer(HFBF16Writer())
