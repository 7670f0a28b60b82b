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
from typing import TYPE_CHECKING

from ...model.checkpoint import Checkpoint, TensorEntry, check_tensor_set, is_ignored_tensor
from ...dtypes import FLOAT_NAMES
from ...errors import CheckpointError
from ...io.safetensors import SafetensorsFile, StoredTensor
from ...ternary.records import SCALES_KEY, VALUES_EXACT, VALUES_KEY, VALUES_ONLINE, decode_records
from .. import register_reader
from .common import looks_like_hf, ordered_names, read_hf_directory
from .packed import is_packed_directory

if TYPE_CHECKING:
    import torch

    from ...ternary.stored import StoredScale
    from ...ternary import TernaryWeight

NAME = "hf-bf16"


def _load_master(
    st: SafetensorsFile, t: StoredTensor, record: StoredScale | None, online: bool
) -> torch.Tensor | TernaryWeight:
    import torch

    from ...ternary import LinearClass, NonFiniteWeight, TernaryWeight, quantize, recover_ternary

    hint = record.to_scale() if record is not None else None
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


def _recorded_counts(st: SafetensorsFile, t: StoredTensor, record: StoredScale):
    """:func:`_load_master`'s finding for exact values with a record, as code counts off the stored bits."""
    from ...ternary.stored import recorded_ternary_counts

    return recorded_ternary_counts(st.read_bytes(t.name), t.dtype_name, record.magnitude_bits(t.dtype_name), record)


class HFBF16Reader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return looks_like_hf(path) and not is_packed_directory(read_hf_directory(path))

    def read(self, path: Path) -> Checkpoint:
        d = read_hf_directory(path)
        cfg = d.config
        notes = list(d.notes)
        hints: dict[str, StoredScale] = {}  # the records' scales, as bytes until a tensor is loaded
        values = d.metadata_value(VALUES_KEY) or VALUES_EXACT
        if values not in (VALUES_EXACT, VALUES_ONLINE):
            raise CheckpointError(path, f"unknown {VALUES_KEY} {values!r} in the safetensors metadata")
        online = values == VALUES_ONLINE
        raw_hints = d.metadata_value(SCALES_KEY)
        if raw_hints:
            hints = {n: r.stored for n, r in decode_records(raw_hints, path).items()}
        entries: dict[str, TensorEntry] = {}
        for name in ordered_names(cfg, d.stored):
            st, t = d.stored[name]
            if is_ignored_tensor(name):
                notes.append(f"ignored buffer {name}")
                continue
            if t.dtype_name not in FLOAT_NAMES:
                raise CheckpointError(st.path, f"a master checkpoint holds float tensors, found {t.dtype_name}", name)
            hint = hints.get(name) if cfg.is_quantized_linear(name) else None
            entries[name] = TensorEntry(
                name,
                t.shape,
                t.dtype_name,
                False,
                str(st.path),
                lambda st=st, t=t, h=hint: _load_master(st, t, h, online),
                hint.to_scale if hint is not None else None,
                stored=t.dtype_name,
                # without a record (and as written), the value is the stored floats themselves
                load_stored=(lambda st=st, t=t: st.read_bytes(t.name)) if hint is None and not online else None,
                load_code_counts=(lambda st=st, t=t, h=hint: _recorded_counts(st, t, h)) if hint and not online else None,
            )
        info = {"float_values": values}
        classes = {s.linear_class for s in hints.values()}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        ckpt = Checkpoint(NAME, path, cfg, entries, d.side_files, notes, info)
        check_tensor_set(ckpt)
        return ckpt


register_reader(HFBF16Reader())
