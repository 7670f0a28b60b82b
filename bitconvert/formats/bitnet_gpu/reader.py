"""Reading ``bitnet-gpu``: the W2A8 GPU checkpoint back to codes and scales, without unpickling.

Opening parses both ``torch.save`` archives (zip directory and ``data.pkl``, by the bounded readers
of :mod:`bitconvert.io`), never their tensor data, and checks every key, dtype and shape against
the layout the ``config.json`` beside them implies. The files carry no configuration of their own
(heads, family, tying), so a folder without ``config.json`` is refused. ``model_state_fp16.pt`` is
checked for its table only: its values are the codes times the scales of ``model_state_int2.pt``,
which is what is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...dtypes import FLOAT_NAMES, Dense, itemsize
from ...errors import CheckpointError
from ...io.provenance import read_provenance_file
from ...io.torch_archive import TorchArchive
from ...io.torch_pickle import SavedTensor, read_dict_pickle
from ...model.checkpoint import Checkpoint, Kind, Stored, TensorEntry, check_tensor_set, float_stored
from ...model.config import ModelConfig, read_hf_config
from ...model.families import EMBEDDING
from ...ternary.linear_class import LinearClass
from ...ternary.scale import Scale
from ...ternary.stats import packed_code_counts
from ...ternary.weight import TernaryWeight
from .. import parsed_once, register_reader
from ..hf.common import check_inside, side_files
from .layout import (
    FP16_FILE, INT2_FILE, NAME, SCALE_SLOTS, GPUTensor, Part, decode_int2, from_interleaved, gpu_tensors, row_blocks,
)  # fmt: skip

LAYOUT = "bitnet-gpu:int2"
_MEAN = LinearClass.AUTOBITLINEAR


class _SavedFile:
    """One torch.save file: its archive and the tensors its pickle describes, each storage checked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.archive = TorchArchive(path)
        saved = read_dict_pickle(self.archive.read("data.pkl").tobytes(), path)
        self.tensors: dict[str, SavedTensor] = {t.key: t for t in saved}
        for t in saved:
            record = self.archive.record(f"data/{t.storage}")
            if record.size != t.storage_numel * itemsize(t.dtype_name):
                raise CheckpointError(path, f"storage data/{t.storage} holds {record.size} bytes, its tensors say "
                                            f"{t.storage_numel} x {t.dtype_name}", t.key)  # fmt: skip

    def expect(self, key: str, dtypes: tuple[str, ...], shape: tuple[int, ...]) -> SavedTensor:
        t = self.tensors.get(key)
        if t is None:
            raise CheckpointError(self.path, "missing tensor", key)
        if t.dtype_name not in dtypes or t.shape != shape:
            raise CheckpointError(self.path, f"{t.dtype_name} {list(t.shape)}, the layout and config.json imply "
                                             f"{'/'.join(dtypes)} {list(shape)}", key)  # fmt: skip
        return t

    def data(self, t: SavedTensor, check_crc: bool = True) -> np.ndarray:
        """The tensor's bytes, flat uint8 (its storage's CRC checked when asked)."""
        size = itemsize(t.dtype_name)
        return self.archive.read(f"data/{t.storage}", check_crc)[t.offset * size : (t.offset + t.numel) * size]


def _w2a8_counts(packed: np.ndarray) -> tuple[int, int, int, int]:
    """Counts of codes -1, 0, +1 and invalid fields in packed int2 bytes (fields hold code + 2)."""
    zero_field, minus, zero, plus = packed_code_counts(packed)
    return minus, zero, plus, zero_field


def _scale(f: _SavedFile, t: SavedTensor, slot: int, parts: int, check: bool = True) -> Scale:
    words = f.data(t, check)
    scale = Scale("BF16", words[2 * slot : 2 * slot + 2].tobytes(), _MEAN)
    if check:
        if not scale.is_valid():
            raise CheckpointError(f.path, f"scale {slot} is {scale.item()}, not finite and positive", t.key)
        if words[2 * parts :].any():
            raise CheckpointError(f.path, f"slots after the {parts} part scale(s) are not zero", t.key)
    return scale


def _ternary_entry(f: _SavedFile, g: GPUTensor, part: Part, slot: int) -> TensorEntry:
    weight = f.expect(g.key, ("I8",), (g.shape[0], g.shape[1] // 4))
    scales = f.expect(g.scale_key, ("BF16",), (SCALE_SLOTS,))
    first, stop = row_blocks(part.start, part.rows)
    cols = g.shape[1] // 4

    def packed(check: bool) -> np.ndarray:
        return f.data(weight, check)[first * cols : stop * cols].reshape(stop - first, cols)

    def load() -> TernaryWeight:
        codes = decode_int2(packed(True))[part.start - first : part.start - first + part.rows]
        bad = np.flatnonzero(codes.reshape(-1) == -2)
        if bad.size:
            row, col = divmod(int(bad[0]), codes.shape[1])
            raise CheckpointError(f.path, f"int2 field 0 (not a code) at row {part.start + row}, column {col} of "
                                          f"{g.key}", part.hf_name)  # fmt: skip
        if part.heads:
            codes = from_interleaved(codes, part.heads)
        return TernaryWeight(np.ascontiguousarray(codes), _scale(f, scales, slot, len(g.parts)))

    def stored() -> Stored:
        raw = packed(False).reshape(-1)
        whole = first == part.start and stop == part.start + part.rows  # the part owns its row blocks
        return Stored(raw, LAYOUT, scale=_scale(f, scales, slot, len(g.parts), False),
                      counts=(lambda: _w2a8_counts(raw)) if whole else None)  # fmt: skip

    label = f"int2 in {g.key} (16x32 tiles) + BF16 scale {slot}"
    return TensorEntry(part.hf_name, (part.rows, g.shape[1]), Kind.TERNARY, "BF16", str(f.path), load, stored, label)


def _dense_entry(f: _SavedFile, g: GPUTensor, tied_output: SavedTensor | None) -> TensorEntry:
    t = f.expect(g.key, FLOAT_NAMES, g.shape)

    def load() -> Dense:
        data = f.data(t)
        if tied_output is not None and not np.array_equal(data, f.data(tied_output)):
            raise CheckpointError(f.path, "differs from tok_embeddings.weight, but config.json ties the embeddings",
                                  tied_output.key)  # fmt: skip
        return Dense.from_bytes(data, t.dtype_name, t.shape)

    return TensorEntry(g.source, t.shape, Kind.DENSE, t.dtype_name, str(f.path), load,
                       lambda: float_stored(f.data(t, False), t.dtype_name), t.dtype_name)  # fmt: skip


def _check_float_file(fp: _SavedFile, int2: _SavedFile, layout: list[GPUTensor]) -> None:
    """model_state_fp16.pt holds the same keys, the fused weights as floats [N, K]."""
    for g in layout:
        if g.fused:
            fp.expect(g.key, FLOAT_NAMES, g.shape)
        elif g.key not in int2.tensors:  # checked against int2 itself later; the fp16 file is read first
            raise CheckpointError(int2.path, "missing tensor", g.key)
        else:
            fp.expect(g.key, (int2.tensors[g.key].dtype_name,), g.shape)
    extra = sorted(set(fp.tensors) - {g.key for g in layout})
    if extra:
        raise CheckpointError(fp.path, "unexpected tensor: the layout has no such key", extra[0])


def _layout(path: Path, cfg: ModelConfig, int2: _SavedFile) -> list[GPUTensor]:
    try:
        layout = gpu_tensors(cfg)
    except ValueError as exc:
        raise CheckpointError(path / "config.json", str(exc)) from None
    keys = {g.key for g in layout} | {g.scale_key for g in layout if g.fused}
    extra = sorted(set(int2.tensors) - keys)
    if extra:
        raise CheckpointError(int2.path, "unexpected tensor: the layout has no such key", extra[0])
    for g in layout:
        for part in g.parts:
            if not cfg.is_quantized_linear(part.hf_name):
                raise CheckpointError(path / "config.json", "left unquantized by config.json, but the W2A8 file holds "
                                                            "it as codes", part.hf_name)  # fmt: skip
    return layout


class BitnetGPUReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / INT2_FILE).is_file()

    def read(self, path: Path) -> Checkpoint:
        if not (path / "config.json").is_file():
            raise CheckpointError(path, f"{INT2_FILE} without a config.json beside it: the W2A8 files hold no model "
                                        "configuration (family, heads, tying); put the model's Hugging Face config.json "
                                        "there (for microsoft/BitNet's own output: microsoft/bitnet-b1.58-2B-4T's)")  # fmt: skip
        cfg = read_hf_config(check_inside(path / "config.json", path))
        int2 = parsed_once((NAME, (path / INT2_FILE).resolve()), lambda: _SavedFile(check_inside(path / INT2_FILE, path)))
        layout = _layout(path, cfg, int2)
        notes = []
        if (path / FP16_FILE).is_file():
            _check_float_file(_SavedFile(check_inside(path / FP16_FILE, path)), int2, layout)
        else:
            notes.append(f"no {FP16_FILE}: microsoft/BitNet's model loads it beside {INT2_FILE} (its non-kernel path)")
        entries: dict[str, TensorEntry] = {}
        for g in layout:
            if g.fused:
                for slot, part in enumerate(g.parts):
                    entries[part.hf_name] = _ternary_entry(int2, g, part, slot)
            elif g.source not in entries:
                entries[g.source] = _dense_entry(int2, g, None)
            else:  # the output of a tied model: the embedding again
                tied = int2.expect(g.key, (entries[g.source].dtype_name,), g.shape)
                entries[g.source] = _dense_entry(int2, next(x for x in layout if x.source == EMBEDDING), tied)
        order = list(cfg.expected_shapes())
        entries = {n: entries[n] for n in order if n in entries}
        ckpt = Checkpoint(NAME, path, cfg, entries, side_files(path), notes)
        ckpt.facts.linear_class = _MEAN
        ckpt.origin.recorded_provenance = read_provenance_file(path)
        check_tensor_set(ckpt)
        return ckpt


register_reader(BitnetGPUReader())
