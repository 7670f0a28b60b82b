"""``hf-bf16``: float master weights in HF safetensors (e.g. microsoft/bitnet-b1.58-2B-4T-bf16).

A master's linear weights are latent floats that BitNet quantizes on the fly. ``unpack`` output is
a master too, whose weights are exactly codes x mean|W| (or, with the writer option
``online_master``, codes x mean|W| / p, which online quantization maps back to the packed layer);
it records each original stored scale in the safetensors metadata so a later ``pack`` gets the
scale back bit for bit even where the reciprocal convention (bitlinear) could not be recovered
from the float values alone.

This module reads the layout (opening needs headers only, no torch); :mod:`.bf16_writer` writes it.
"""

from __future__ import annotations

from pathlib import Path

from ...dtypes import FLOAT_NAMES
from ...errors import CheckpointError
from ...io.provenance import read_provenance_file
from ...io.safetensors import SafetensorsFile, StoredTensor
from ...model.checkpoint import Checkpoint, Kind, Stored, TensorEntry, check_tensor_set, float_stored, is_ignored_tensor
from ...ternary.records import SCALES_KEY, VALUES_EXACT, VALUES_KEY, VALUES_ONLINE, ScaleRecord, decode_records
from ...ternary.stats import float_code_counts
from .. import register_reader
from .common import looks_like_hf, ordered_names, read_hf_directory
from .packed import is_packed_directory

NAME = "hf-bf16"


def _stored(st: SafetensorsFile, t: StoredTensor, record: ScaleRecord | None) -> Stored:
    """The floats as stored; with an exact record, their codes counted off the bits against its magnitude."""
    raw = st.read_bytes(t.name)
    if record is None or record.online:
        return float_stored(raw, t.dtype_name)
    magnitude = record.scale.magnitude_bits(t.dtype_name)
    return Stored(raw, "floats", t.dtype_name, record.scale, lambda: float_code_counts(raw, t.dtype_name, magnitude))


class HFBF16Reader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return looks_like_hf(path) and not is_packed_directory(read_hf_directory(path))

    def read(self, path: Path) -> Checkpoint:
        d = read_hf_directory(path)
        cfg = d.config
        notes = list(d.notes)
        values = d.metadata_value(VALUES_KEY) or VALUES_EXACT
        if values not in (VALUES_EXACT, VALUES_ONLINE):
            raise CheckpointError(path, f"unknown {VALUES_KEY} {values!r} in the safetensors metadata")
        raw_records = d.metadata_value(SCALES_KEY)
        records = decode_records(raw_records, path, values == VALUES_ONLINE) if raw_records else {}
        entries: dict[str, TensorEntry] = {}
        for name in ordered_names(cfg, d.stored):
            st, t = d.stored[name]
            if is_ignored_tensor(name):
                notes.append(f"ignored buffer {name}")
                continue
            if t.dtype_name not in FLOAT_NAMES:
                raise CheckpointError(st.path, f"a master checkpoint holds float tensors, found {t.dtype_name}", name)
            quantized = cfg.is_quantized_linear(name)
            record = records.get(name) if quantized else None
            entries[name] = TensorEntry(
                name, t.shape, Kind.LATENT if quantized else Kind.DENSE, t.dtype_name, str(st.path),
                lambda st=st, t=t: st.read(t.name), lambda st=st, t=t, r=record: _stored(st, t, r), t.dtype_name,
                record=record, online=quantized and values == VALUES_ONLINE,
                rows=lambda a, b, st=st, t=t: st.read_rows(t.name, a, b),
                row_bytes=lambda a, b, st=st, t=t: st.row_slice(t.name, a, b),
            )  # fmt: skip
        ckpt = Checkpoint(NAME, path, cfg, entries, d.side_files, notes)
        ckpt.origin.recorded_provenance = read_provenance_file(path)
        classes = {r.scale.linear_class for r in records.values()}
        if len(classes) == 1:
            ckpt.facts.linear_class = classes.pop()
        check_tensor_set(ckpt)
        return ckpt


register_reader(HFBF16Reader())
