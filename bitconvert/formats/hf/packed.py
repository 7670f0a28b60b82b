"""``hf-packed``: transformers' ``quant_method: "bitnet"`` layout, 2-bit codes in U8 plus weight_scale.

This module reads it (opening needs headers only, no torch); :mod:`.packed_writer` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...model.checkpoint import Checkpoint, TensorEntry, check_tensor_set, is_ignored_tensor
from ...dtypes import FLOAT_NAMES
from ...errors import CheckpointError
from ...ternary.linear_class import LinearClass
from ...ternary.stats import VALUES_PER_BYTE
from ...io.safetensors import SafetensorsFile, StoredTensor
from ...ternary.stored import StoredScale
from .. import register_reader
from .common import HFDirectory, looks_like_hf, ordered_names, read_hf_directory

if TYPE_CHECKING:
    import torch

    from ...ternary import TernaryScale, TernaryWeight

NAME = "hf-packed"


def scale_name(weight_name: str) -> str:
    return weight_name[: -len("weight")] + "weight_scale"


def is_packed_directory(d: HFDirectory) -> bool:
    return any(
        name.endswith(".weight_scale") or (d.config.is_quantized_linear(name) and t.dtype_name == "U8")
        for name, (_, t) in d.stored.items()
    )


def _stored_scale(st: SafetensorsFile, t: StoredTensor, linear_class: LinearClass) -> StoredScale:
    """The weight_scale's bytes as stored, unchecked but for being one float."""
    if t.shape not in ((1,), ()) or t.dtype_name not in FLOAT_NAMES:
        raise CheckpointError(st.path, f"weight_scale must be one float, got {t.dtype_name} {list(t.shape)}", t.name)
    return StoredScale(t.dtype_name, st.read_bytes(t.name).tobytes(), linear_class)


def _load_scale(st: SafetensorsFile, t: StoredTensor, linear_class: LinearClass, weight: str) -> TernaryScale:
    scale = _stored_scale(st, t, linear_class).to_scale()
    if not scale.is_valid():
        raise CheckpointError(st.path, f"weight_scale is {scale.item()}, not finite and positive", t.name)
    return scale


def _load_codes(st: SafetensorsFile, t: StoredTensor) -> torch.Tensor:
    import torch

    from ...ternary import first_invalid_code, unpack_codes

    raw = st.read(t.name)
    if t.dtype_name == "U8":
        bad = first_invalid_code(raw)
        if bad is not None:
            raise CheckpointError(st.path, f"packed code 3 (not ternary) at row {bad[0]}, column {bad[1]}", t.name)
        return unpack_codes(raw)
    # transformers' offline AutoBitLinear also accepts the codes unpacked, as floats.
    if not bool(((raw == -1) | (raw == 0) | (raw == 1)).all()):
        raise CheckpointError(st.path, "unpacked ternary weight holds values other than -1, 0, 1", t.name)
    return raw.to(torch.int8)


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
                    name, t.shape, t.dtype_name, False, str(st.path), lambda st=st, t=t: st.read(t.name),
                    stored=t.dtype_name, load_stored=lambda st=st, t=t: st.read_bytes(t.name),
                )
                continue
            sname = scale_name(name)
            if sname not in d.stored:
                raise CheckpointError(st.path, f"quantized weight has no {sname.rsplit('.', 1)[-1]}", name)
            scales_used.add(sname)
            sst, stt = d.stored[sname]
            packed = t.dtype_name == "U8"
            shape = (t.shape[0] * VALUES_PER_BYTE, *t.shape[1:]) if packed else t.shape

            def load_scale(sst=sst, stt=stt, name=name) -> TernaryScale:
                return _load_scale(sst, stt, linear_class, name)

            def load(st=st, t=t, load_scale=load_scale) -> TernaryWeight:
                from ...ternary import TernaryWeight

                return TernaryWeight(_load_codes(st, t), load_scale())

            stored = f"{t.dtype_name}{' packed' if packed else ''} + {stt.dtype_name} scale"
            entries[name] = TensorEntry(
                name, shape, stt.dtype_name, True, str(st.path), load, load_scale, stored,
                load_packed=(lambda st=st, t=t: st.read_bytes(t.name).reshape(t.shape)) if packed else None,
                load_stored_scale=(lambda sst=sst, stt=stt: _stored_scale(sst, stt, linear_class)) if packed else None,
            )
        orphans = sorted(n for n in d.stored if n.endswith(".weight_scale") and n not in scales_used)
        if orphans:
            raise CheckpointError(d.stored[orphans[0]][0].path, "weight_scale belongs to no quantized weight", orphans[0])
        ckpt = Checkpoint(NAME, path, cfg, entries, d.side_files, notes)
        check_tensor_set(ckpt)
        return ckpt


register_reader(HFPackedReader())
