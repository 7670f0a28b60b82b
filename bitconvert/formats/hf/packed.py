"""``hf-packed``: transformers' ``quant_method: "bitnet"`` layout, 2-bit codes in U8 plus weight_scale.

This module reads it (opening needs headers only); :mod:`.packed_writer` writes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...dtypes import FLOAT_NAMES
from ...errors import CheckpointError
from ...io.provenance import read_provenance_file
from ...io.safetensors import SafetensorsFile, StoredTensor, page_release
from ...model.checkpoint import Checkpoint, Kind, Stored, TensorEntry, check_tensor_set, float_stored, is_ignored_tensor
from ...ternary.linear_class import LinearClass
from ...ternary.packing import VALUES_PER_BYTE, first_invalid_code, unpack_codes
from ...ternary.scale import Scale
from ...ternary.stats import packed_code_counts
from ...ternary.weight import TernaryWeight
from .. import register_reader
from .common import HFDirectory, looks_like_hf, ordered_names, read_hf_directory

NAME = "hf-packed"


def scale_name(weight_name: str) -> str:
    return weight_name[: -len("weight")] + "weight_scale"


def is_packed_directory(d: HFDirectory) -> bool:
    return any(
        name.endswith(".weight_scale") or (d.config.is_quantized_linear(name) and t.dtype_name == "U8")
        for name, (_, t) in d.stored.items()
    )


def _stored_scale(st: SafetensorsFile, t: StoredTensor, linear_class: LinearClass) -> Scale:
    """The weight_scale's bytes as stored, unchecked but for being one float."""
    if t.shape not in ((1,), ()) or t.dtype_name not in FLOAT_NAMES:
        raise CheckpointError(st.path, f"weight_scale must be one float, got {t.dtype_name} {list(t.shape)}", t.name)
    return Scale(t.dtype_name, st.read_bytes(t.name).tobytes(), linear_class)


def _load_scale(st: SafetensorsFile, t: StoredTensor, linear_class: LinearClass) -> Scale:
    scale = _stored_scale(st, t, linear_class)
    if not scale.is_valid():
        raise CheckpointError(st.path, f"weight_scale is {scale.item()}, not finite and positive", t.name)
    return scale


def _load_codes(st: SafetensorsFile, t: StoredTensor) -> np.ndarray:
    raw = st.read(t.name)
    if t.dtype_name == "U8":
        bad = first_invalid_code(raw.data)
        if bad is not None:
            raise CheckpointError(st.path, f"packed code 3 (not ternary) at row {bad[0]}, column {bad[1]}", t.name)
        return unpack_codes(raw.data)
    # transformers' offline AutoBitLinear also accepts the codes unpacked, as floats.
    values = raw.float32() if raw.is_float else raw.data
    if not ((values == -1) | (values == 0) | (values == 1)).all():
        raise CheckpointError(st.path, "unpacked ternary weight holds values other than -1, 0, 1", t.name)
    return values.astype(np.int8)


def _entry(name: str, st: SafetensorsFile, t: StoredTensor, sst: SafetensorsFile, stt: StoredTensor,
           linear_class: LinearClass) -> TensorEntry:  # fmt: skip
    packed = t.dtype_name == "U8"
    shape = (t.shape[0] * VALUES_PER_BYTE, *t.shape[1:]) if packed else t.shape

    def load() -> TernaryWeight:
        return TernaryWeight(_load_codes(st, t), _load_scale(sst, stt, linear_class))

    def stored() -> Stored:
        raw = st.read_bytes(t.name)
        scale = _stored_scale(sst, stt, linear_class)
        if packed:
            return Stored(raw, NAME, scale=scale, counts=lambda: packed_code_counts(raw, page_release(raw)))  # read, never written
        return Stored(raw, "floats", t.dtype_name, scale)

    label = f"{t.dtype_name}{' packed' if packed else ''} + {stt.dtype_name} scale"
    return TensorEntry(name, shape, Kind.TERNARY, stt.dtype_name, str(st.path), load, stored, label)


class HFPackedReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return looks_like_hf(path) and is_packed_directory(read_hf_directory(path))

    def read(self, path: Path) -> Checkpoint:
        d = read_hf_directory(path)
        cfg = d.config
        notes = list(d.notes)
        if cfg.quantization is None:
            notes.append("packed weights but no quantization_config: weight_scale read as transformers' default, bitlinear")
        linear_class = cfg.quantization.linear_class if cfg.quantization else LinearClass.BITLINEAR
        entries: dict[str, TensorEntry] = {}
        scales_used = set()
        for name in ordered_names(cfg, d.stored):
            st, t = d.stored[name]
            if name.endswith(".weight_scale"):
                continue
            if is_ignored_tensor(name):
                notes.append(f"ignored buffer {name}")
                continue
            if not cfg.is_quantized_linear(name):
                entries[name] = TensorEntry(
                    name, t.shape, Kind.DENSE, t.dtype_name, str(st.path), lambda st=st, t=t: st.read(t.name),
                    lambda st=st, t=t: float_stored(st.read_bytes(t.name), t.dtype_name), t.dtype_name,
                    rows=lambda a, b, st=st, t=t: st.read_rows(t.name, a, b),
                    row_bytes=lambda a, b, st=st, t=t: st.row_slice(t.name, a, b),
                )
                continue
            sname = scale_name(name)
            if sname not in d.stored:
                raise CheckpointError(st.path, f"quantized weight has no {sname.rsplit('.', 1)[-1]}", name)
            scales_used.add(sname)
            entries[name] = _entry(name, st, t, *d.stored[sname], linear_class)
        orphans = sorted(n for n in d.stored if n.endswith(".weight_scale") and n not in scales_used)
        if orphans:
            raise CheckpointError(d.stored[orphans[0]][0].path, "weight_scale belongs to no quantized weight", orphans[0])
        ckpt = Checkpoint(NAME, path, cfg, entries, d.side_files, notes)
        ckpt.origin.recorded_provenance = read_provenance_file(path)
        check_tensor_set(ckpt)
        return ckpt


register_reader(HFPackedReader())
