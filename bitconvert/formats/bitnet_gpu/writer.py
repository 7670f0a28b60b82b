"""Writing ``bitnet-gpu``: microsoft/BitNet's W2A8 GPU checkpoint, both files, without torch.

Each fused weight is built from the checkpoint's ternary weights (kept, recovered, or quantized by
the recipe), packed in int2 tiles with its bf16 scales; the float file gets the codes times those
scales. The two ``torch.save`` archives are written side by side, record after record, by
:mod:`bitconvert.io.torch_archive` (torch 2.13's bytes), so only the tensors being made are held.
The layout stores one bf16 mean|W| per weight: a stored scale that bf16 cannot hold is a loss.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...dtypes import EXPONENT_BITS, Dense, itemsize, numpy_dtype
from ...errors import CheckpointError, UsageError
from ...io.pipeline import ahead_budget, produced_ahead
from ...io.torch_archive import ALIGNMENT, FORMAT_VERSION, MAX_WRITTEN_RECORDS, TorchArchiveWriter
from ...io.torch_pickle import SavedTensor, dict_pickle
from ...model.checkpoint import Checkpoint, TensorEntry, as_dense, entry_as_ternary
from ...model.config import QuantConfig, QuantMode
from ...ternary import LinearClass, TernaryWeight
from ...ternary.recipes import Recipe, check_recipe, recipe_quantizer
from .. import Progress, WriteReport, register_writer
from ..hf.common import copy_side_files, write_json
from .layout import (
    FP16_FILE, GPU_ACTIVATION, INT2_FILE, MODEL_ARGS, NAME, SCALE_SLOTS, GPUTensor, encode_int2, gpu_tensors,
    packing_problem, to_interleaved,
)  # fmt: skip
from .options import BitnetGPUOptions

#: the torch version whose torch.save bytes the archives reproduce
TORCH_SERIALIZATION = "torch 2.13"
_MEAN = LinearClass.AUTOBITLINEAR  # the kernel multiplies by the stored scale


class _Group:
    """One key of the GPU dict, planned: what it adds to each file."""

    def __init__(self, t: GPUTensor, int2: list[SavedTensor], fp16: SavedTensor) -> None:
        self.t, self.int2, self.fp16 = t, int2, fp16

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.int2) + self.fp16.nbytes


def _plan(ckpt: Checkpoint, options: BitnetGPUOptions) -> tuple[list[GPUTensor], list[str]]:
    """The GPU dict's keys, refusing what the layout cannot hold; the losses ``--allow-lossy`` accepts."""
    cfg = ckpt.config
    try:
        tensors = gpu_tensors(cfg)
    except ValueError as exc:
        raise UsageError(f"--to {NAME}: {exc}") from None
    for t in tensors:
        if t.fused and (problem := packing_problem(t)):
            raise CheckpointError(ckpt.path, problem)
        for part in t.parts:
            if not ckpt.is_quantized_linear(part.hf_name):
                raise CheckpointError(ckpt.path, "not quantized in this model (modules_to_not_convert); the W2A8 "
                                                 "layout holds every projection as codes", part.hf_name)  # fmt: skip
    check_recipe(options.recipe, NAME, {}, ckpt.first_stored_ternary(), f"{ckpt.path} ({ckpt.format})")
    records = len(tensors) + sum(t.fused for t in tensors) + 6  # the storages, and torch.save's own records
    if records > MAX_WRITTEN_RECORDS:
        raise UsageError(f"--to {NAME}: {records} records in {INT2_FILE}; torch.save's bytes are reproduced up to "
                         f"{MAX_WRITTEN_RECORDS}")  # fmt: skip
    lost = []
    if cfg.hidden_act != GPU_ACTIVATION:
        lost.append(f"the activation: gpu/model.py computes {GPU_ACTIVATION} (squared ReLU), this model {cfg.hidden_act}")
    return tensors, lost


def _negative_zeros(value: Dense, codes: np.ndarray) -> np.ndarray:
    """Where a latent value rounded to code 0 from below: the converter's float file keeps -0.0 there."""
    word = EXPONENT_BITS[value.dtype_name][0]
    bits = 8 * np.dtype(word).itemsize
    return ((np.ascontiguousarray(value.data).view(word) >> word(bits - 1)) == 1) & (codes == 0)


def _dequantized(codes: np.ndarray, tw: TernaryWeight, dtype_name: str, negative: np.ndarray | None) -> np.ndarray:
    """codes x the stored scale as words of ``dtype_name``; -0.0 where ``negative`` says."""
    word_type = np.dtype(f"<u{itemsize(dtype_name)}")
    magnitude, sign = word_type.type(tw.scale.magnitude_bits(dtype_name)), word_type.type(1 << (8 * word_type.itemsize - 1))
    words = np.zeros(codes.shape, dtype=word_type)
    words[codes > 0] = magnitude
    words[codes < 0] = magnitude | sign
    if negative is not None:
        words[negative] = sign
    return words.view(numpy_dtype(dtype_name))


class BitnetGPUWriter:
    name = NAME
    writes_directory = True
    Options = BitnetGPUOptions
    kernels = ("block_abs_sums", "codes_flat")

    def write(self, ckpt: Checkpoint, out: Path, options: BitnetGPUOptions, progress: Progress) -> WriteReport:
        tensors, lost = _plan(ckpt, options)
        if lost and not options.allow_lossy:
            raise CheckpointError(ckpt.path, f"--to {NAME} would lose {'; '.join(lost)}. Pass --allow-lossy to write anyway")
        report = WriteReport(NAME)
        report.warnings += [f"lost in the W2A8 GPU model: {loss}" for loss in lost]
        _Job(ckpt, options, report).run(tensors, out, progress)
        return report


class _Job:
    """One conversion: what it writes and what it found along the way (the writer itself keeps no state)."""

    def __init__(self, ckpt: Checkpoint, options: BitnetGPUOptions, report: WriteReport) -> None:
        self.ckpt, self.options, self.report = ckpt, options, report
        self.how: Counter = Counter()
        self.fp_dtype = options.dtype or ckpt.model_dtype()
        self._last_dense: tuple[str, np.ndarray] | None = None

    def run(self, tensors: list[GPUTensor], out: Path, progress: Progress) -> None:
        groups = self._groups(tensors)
        archives = [TorchArchiveWriter(out / f, Path(f).stem) for f in (INT2_FILE, FP16_FILE)]
        try:
            for archive, saved in zip(archives, ([s for g in groups for s in g.int2], [g.fp16 for g in groups])):
                archive.add("data.pkl", dict_pickle(saved))
                archive.add(".format_version", FORMAT_VERSION)
                archive.add(".storage_alignment", str(ALIGNMENT).encode())
                archive.add("byteorder", b"little")
            made = produced_ahead(groups, self._produce, ahead_budget(groups))
            try:
                for i, g in enumerate(groups):
                    progress(i, len(groups), g.t.key)
                    int2, fp16 = next(made)
                    for saved, payload in zip(g.int2, int2):
                        archives[0].add(f"data/{saved.storage}", payload)
                    archives[1].add(f"data/{g.fp16.storage}", fp16)
            finally:
                made.close()
            for archive in archives:
                archive.close()
        finally:
            for archive in archives:
                archive.abort()
        progress(len(groups), len(groups), "")
        self._finish(out)

    def _groups(self, tensors: list[GPUTensor]) -> list[_Group]:
        groups, n_int2 = [], 0
        for i, t in enumerate(tensors):
            if t.fused:
                n, k = t.shape
                int2 = [SavedTensor(t.key, "I8", (n, k // 4), str(n_int2)),
                        SavedTensor(t.scale_key, "BF16", (SCALE_SLOTS,), str(n_int2 + 1))]  # fmt: skip
                fp16 = SavedTensor(t.key, self.fp_dtype, t.shape, str(i))
            else:
                dtype = self.options.dtype or self.ckpt.source_dtype(t.source)
                int2 = [SavedTensor(t.key, dtype, t.shape, str(n_int2))]
                fp16 = SavedTensor(t.key, dtype, t.shape, str(i))
            n_int2 += len(int2)
            groups.append(_Group(t, int2, fp16))
        return groups

    def _produce(self, g: _Group) -> tuple[list[np.ndarray | bytes], np.ndarray]:
        t = g.t
        if not t.fused:
            if self._last_dense is None or self._last_dense[0] != t.source:  # a tied output repeats the embedding
                self._last_dense = (t.source, as_dense(self.ckpt.tensors[t.source].load(), g.int2[0].dtype_name).data)
            return [self._last_dense[1]], self._last_dense[1]
        codes = np.empty(t.shape, dtype=np.int8)
        floats = np.empty(t.shape, dtype=numpy_dtype(self.fp_dtype))
        scales = b""
        for part in t.parts:
            tw, negative = self._ternary(self.ckpt.tensors[part.hf_name])
            c = tw.codes
            if part.heads:
                c = to_interleaved(c, part.heads)
                negative = None if negative is None else to_interleaved(negative, part.heads)
            rows = slice(part.start, part.start + part.rows)
            codes[rows] = c
            floats[rows] = _dequantized(c, tw, self.fp_dtype, negative)
            scales += tw.scale.data
        scales += bytes(2 * (SCALE_SLOTS - len(t.parts)))
        return [encode_int2(codes), scales], floats

    def _ternary(self, entry: TensorEntry) -> tuple[TernaryWeight, np.ndarray | None]:
        """The weight with its scale as the layout stores it (bf16 mean|W|), and where the float file
        writes -0.0 (quantized weights only). A stored scale bf16 cannot hold: refused, or a warning."""
        value = entry.load()
        # the scale in float64 first: exact for any stored scale, so a bf16 loss shows
        tw, how = entry_as_ternary(entry, value, _MEAN, "F64", recipe_quantizer(self.options.recipe))
        self.how[how] += 1
        scale = tw.scale.to(_MEAN, "BF16")
        if how != "quantized" and scale.item() != tw.scale.item():
            loss = (f"{entry.name}: scale {tw.scale.multiplier!r} (mean|W|) is stored as bf16 {scale.item()!r} "
                    f"(relative change {abs(scale.item() - tw.scale.multiplier) / tw.scale.multiplier:.3g})")  # fmt: skip
            if not self.options.allow_lossy:
                raise CheckpointError(entry.source, f"--to {NAME} stores each scale in bf16; {loss}. Pass --allow-lossy "
                                                    "to write it rounded")  # fmt: skip
            self.report.warnings.append(f"scale rounded to bf16: {loss}")
        quantized = how == "quantized" and isinstance(value, Dense) and value.dtype_name in EXPONENT_BITS
        return TernaryWeight(tw.codes, scale), (_negative_zeros(value, tw.codes) if quantized else None)

    def _finish(self, out: Path) -> None:
        ckpt, report, cfg = self.ckpt, self.report, self.ckpt.config
        src_q = cfg.quantization or QuantConfig()
        quant = QuantConfig(_MEAN, QuantMode.OFFLINE, src_q.modules_to_not_convert, src_q.use_rms_norm, src_q.rms_norm_eps)
        write_json(out / "config.json", cfg.to_hf_dict(quant, ckpt.model_dtype()))
        report.files += [INT2_FILE, FP16_FILE, "config.json"] + copy_side_files(ckpt.side_files, out)
        report.tensors = len(ckpt.tensors)
        report.bytes_written = sum((out / f).stat().st_size for f in (INT2_FILE, FP16_FILE))
        report.ternary_sources = dict(self.how)
        report.details.update(recipe=self.options.recipe.value, torch_serialization=TORCH_SERIALIZATION)
        other = {k: getattr(cfg, k) for k, v in MODEL_ARGS.items() if getattr(cfg, k) != v}
        if other:
            report.details["model_args"] = (f"gpu/model.py's ModelArgs builds BitNet b1.58 2B-4T; this model differs in "
                                            f"{other}: edit ModelArgs to load it")  # fmt: skip
        untouched = sum(n for how, n in self.how.items() if how != "quantized")
        if self.options.recipe is not Recipe.TRANSFORMERS and untouched:
            report.warnings.append(f"{untouched} tensor(s) were already ternary floats (codes x one magnitude): kept "
                                   f"as they are, not requantized with --recipe {self.options.recipe.value}")  # fmt: skip


register_writer(BitnetGPUWriter())
