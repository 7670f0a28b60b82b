"""Reading Nanotron checkpoints of any tensor-parallel size, one Hugging Face tensor at a time.

Layout (docs/nanotron.md): ``model/model/<param path>/`` holds either ``model_weight.safetensors``
(norms) or one ``model_weight_pp-rank-P-of-N_tp-rank-R-of-T.safetensors`` per TP rank, each with a
single ``"data"`` tensor and metadata saying which slice of the unsharded tensor it holds. Opening
reads file names, headers and side files only: it takes the TP size from the file names and checks
that the metadata tiles every tensor exactly. Loading a tensor copies its rows straight out of the
rank files, so only that tensor is resident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...model.checkpoint import Checkpoint, TensorEntry, check_tensor_set
from ...dtypes import FLOAT_NAMES, itemsize, torch_dtype
from ...errors import CheckpointError
from ...io.safetensors import SafetensorsFile
from ...ternary.stored import float_bits, recorded_ternary_counts
from .. import register_reader
from ..hf.common import NOT_SIDE_FILES
from .config import CHECKPOINT_METADATA, KEPT_FILE, MODEL_CONFIG, OWN_FILES, NanotronMeta, read_meta
from .layout import (
    ATTN_SUB_NORM,
    FFN_SUB_NORM,
    UNSHARDED_FILE,
    ModelLayout,
    ParamSpec,
    Part,
    from_interleaved,
    param_specs,
    unplaced_tensors,
)
from .shards import StoredParam, assemble_words, open_sharded, open_unsharded, scan_weight_files, shard_ranks

if TYPE_CHECKING:  # opening reads headers only; torch where a tensor is loaded
    import torch

    from ...ternary.records import ScaleRecord

    from ...ternary import TernaryWeight

NAME = "nanotron"


def _latent_words(param: StoredParam, part: Part, rope_interleaved: bool) -> np.ndarray:
    """The HF tensor ``part`` of ``param`` as stored words (numpy, no torch): its rows gathered from the
    ranks, q/k rows put back in HF order where Nanotron keeps them interleaved."""
    w = assemble_words(param, part.start, part.start + part.rows)
    if part.rope_heads and rope_interleaved:
        w = np.ascontiguousarray(from_interleaved(w, part.rope_heads))
    return w


def _load_latent(param: StoredParam, part: Part, rope_interleaved: bool) -> torch.Tensor:
    import torch

    return torch.from_numpy(_latent_words(param, part, rope_interleaved)).view(param.dtype)


def _recorded_counts(param: StoredParam, part: Part, record: ScaleRecord):
    """What :func:`_load_recorded` finds, as code counts off the stored bits (rows in any order)."""
    if record.written_raw is None or record.written_raw[0] != param.dtype_name:
        return None
    words = assemble_words(param, part.start, part.start + part.rows)
    magnitude = int.from_bytes(record.written_raw[1], "little")
    return recorded_ternary_counts(words.reshape(-1).view(np.uint8), param.dtype_name, magnitude, record.stored)


def _as_recorded(w: torch.Tensor, record: ScaleRecord) -> TernaryWeight | None:
    """The packed weight bitconvert wrote as ``w``, if ``w`` is still exactly its codes x the magnitude written."""
    import torch

    from ...ternary import TernaryWeight, recover_ternary

    scale, written = record.scale, record.written
    if w.dtype != written.dtype:
        return None
    if not bool(w.any()):
        return TernaryWeight(torch.zeros(w.shape, dtype=torch.int8), scale)
    found = recover_ternary(w)
    if found is not None and torch.equal(found[1].reshape(()), written):
        return TernaryWeight(found[0], scale)
    return None


def _load_recorded(param: StoredParam, part: Part, meta: NanotronMeta) -> TernaryWeight:
    """The ternary weight behind a latent one bitconvert wrote from a packed source.

    Checked here, when the tensor is loaded anyway, and not at open: opening reads no tensor data.
    A weight that changed since (edited in place; Nanotron's own saves drop the record) is an
    error rather than a silent switch to latent, because a writer may already have used the
    recorded scale (``load_scale``) for this tensor.
    """
    tw = _as_recorded(_load_latent(param, part, meta.rope_interleaved), meta.scales[part.hf_name])
    if tw is None:
        raise CheckpointError(
            param.folder,
            f"no longer equals the ternary weight whose scale {CHECKPOINT_METADATA} records "
            "(custom_metas.bitconvert.ternary_scales); delete that record to read the weights as latent ones",
            part.hf_name,
        )
    return tw


def _side_files(path: Path) -> list[Path]:
    return [
        p
        for p in sorted(path.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name not in OWN_FILES and p.suffix not in NOT_SIDE_FILES
    ]


# --- the stages of opening a checkpoint ------------------------------------------------------------


@dataclass
class _PlannedParam:
    spec: ParamSpec
    folder: Path
    by_rank: dict[int, Path] | None  # None: one unsharded file
    files: list[Path]


def _plan_files(path: Path, specs: list[ParamSpec], found: dict[str, list[Path]]) -> tuple[list[_PlannedParam], int | None]:
    """Match every parameter the config implies to its files, by name only; the TP size they agree on."""
    root = path / "model" / "model"
    known = {s.path for s in specs}
    for folder in sorted(found):
        if folder not in known:
            raise CheckpointError(root / folder, "unexpected parameter: model_config.json implies no such weight")
    # File names first: a wrong TP size is reported as such, not as the slices it then gets wrong.
    planned: list[_PlannedParam] = []
    tp_sizes: dict[int, Path] = {}
    for spec in specs:
        folder = root / spec.path
        files = found.get(spec.path)
        if not files:
            raise CheckpointError(folder, "missing parameter: no weight file")
        if [f.name for f in files] == [UNSHARDED_FILE]:
            planned.append(_PlannedParam(spec, folder, None, files))
            continue
        if any(f.name == UNSHARDED_FILE for f in files):
            raise CheckpointError(folder, "holds both an unsharded file and tensor-parallel shards")
        by_rank, tp, _ = shard_ranks(files, folder)
        tp_sizes.setdefault(tp, folder)
        if len(tp_sizes) > 1:
            (a, fa), (b, fb) = list(tp_sizes.items())[:2]
            raise CheckpointError(fb, f"mismatched ranks: {b} tensor-parallel shards here, {a} in {fa.relative_to(path)}")
        planned.append(_PlannedParam(spec, folder, by_rank, files))
    return planned, next(iter(tp_sizes), None)


def _open_params(path: Path, planned: list[_PlannedParam], notes: set[str]) -> tuple[list[StoredParam], str | None]:
    """Every parameter's headers, checked; the one checkpoint version its shards state."""
    versions: dict[str, Path] = {}
    params = [
        open_unsharded(p.spec, p.folder, p.files[0])
        if p.by_rank is None
        else open_sharded(p.spec, p.folder, p.by_rank, notes, versions)
        for p in planned
    ]
    if len(versions) > 1:
        (va, fa), (vb, fb) = list(versions.items())[:2]
        raise CheckpointError(fb, f"checkpoint version {vb} differs from {va} in {fa.relative_to(path)}")
    return params, next(iter(versions), None)


def _entry(param: StoredParam, part: Part, meta: NanotronMeta) -> TensorEntry:
    """The lazy tensor for one HF tensor inside ``param``; nothing is read until it is loaded."""
    n = len(param.shards)
    how = param.dtype_name + (f", {n} TP shards" if param.spec.sharded else "")
    if len(param.spec.parts) > 1:
        how += f", fused {param.spec.path.rsplit('/', 1)[-1]}"
    shape = (part.rows, *param.spec.shape[1:])
    hint = meta.scales.get(part.hf_name)
    if hint is None:
        load = lambda: _load_latent(param, part, meta.rope_interleaved)
        stored = lambda: _latent_words(param, part, meta.rope_interleaved).reshape(-1).view(np.uint8)
        return TensorEntry(part.hf_name, shape, param.dtype_name, False, str(param.folder), load, stored=how,
                           load_stored=stored)  # fmt: skip
    # A weight bitconvert wrote from a packed one is that ternary weight while it is unchanged.
    return TensorEntry(
        part.hf_name,
        shape,
        hint.stored.dtype_name,
        True,
        str(param.folder),
        lambda: _load_recorded(param, part, meta),
        hint.stored.to_scale,
        stored=how + " (latent of a packed weight)",
        load_code_counts=lambda: _recorded_counts(param, part, hint),
    )


def _layout_of(found: dict[str, list[Path]]) -> ModelLayout:
    """Which of the Nanotron codebases' folder layouts the weight folders follow (see flavors.py)."""
    mlp = "MLPBitNet" if any("/pp_block/MLPBitNet/" in k for k in found) else "mlp"
    norms = any(k.endswith(("/input_layernorm", "/post_attention_layernorm")) for k in found)
    sub_norms = any(k.endswith((ATTN_SUB_NORM, FFN_SUB_NORM)) for k in found)
    return ModelLayout(mlp, norms, sub_norms)


def _open_kept(path: Path) -> SafetensorsFile | None:
    f = path / KEPT_FILE
    return SafetensorsFile(f) if f.is_file() else None


def _ones(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    import torch

    return torch.ones(shape, dtype=torch_dtype(dtype))


def _ones_bytes(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    word = float_bits(np.float64(1.0), dtype).to_bytes(itemsize(dtype), "little")
    return np.frombuffer(word * math.prod(shape), dtype=np.uint8)


def _unplaced_entries(
    path: Path, meta: NanotronMeta, specs: list[ParamSpec], kept: SafetensorsFile | None, dtype: str
) -> dict[str, TensorEntry]:
    """Tensors the model has but no parameter folder holds: from bitconvert's kept file, else decoder
    norms of a model without them (PR #180) as ones, with a warning."""
    shapes = meta.config.expected_shapes()
    out: dict[str, TensorEntry] = {}
    ones = []
    for name in unplaced_tensors(meta.config, specs):
        stored = kept.tensors.get(name) if kept is not None else None
        if stored is not None:
            if stored.shape != shapes[name] or stored.dtype_name not in FLOAT_NAMES:
                raise CheckpointError(kept.path, f"holds shape {list(stored.shape)}, the model needs {list(shapes[name])}", name)
            load = lambda kept=kept, name=name: kept.read(name)
            out[name] = TensorEntry(
                name, shapes[name], stored.dtype_name, False, str(kept.path), load, stored="kept beside",
                load_stored=lambda kept=kept, name=name: kept.read_bytes(name),
            )
        elif name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
            ones.append(name)
            load = lambda shape=shapes[name]: _ones(shape, dtype)
            out[name] = TensorEntry(name, shapes[name], dtype, False, "(none)", load, stored="absent: ones",
                                    load_stored=lambda shape=shapes[name]: _ones_bytes(shape, dtype))  # fmt: skip
        else:
            raise CheckpointError(path / KEPT_FILE, "missing parameter: neither a weight folder nor this file holds it", name)
    if ones:
        meta.warnings.append(
            f"{len(ones)} decoder norm weights (input_layernorm, post_attention_layernorm) are not in this checkpoint "
            "(PR #180's model has none): read as ones"
        )
    return out


class NanotronReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / MODEL_CONFIG).is_file() and (path / "model").is_dir()

    def read(self, path: Path) -> Checkpoint:
        """Open ``path``: file names, safetensors headers and side files only, never tensor data."""
        found = scan_weight_files(path)
        layout = _layout_of(found)
        kept = _open_kept(path)
        meta = read_meta(path, layout.sub_norms, set(kept.tensors) if kept else set())
        specs = param_specs(meta.config, meta.vocab_rows, layout)
        planned, tp = _plan_files(path, specs, found)
        if tp is not None and meta.tp is not None and meta.tp != tp:
            raise CheckpointError(
                path / CHECKPOINT_METADATA, f"says tp={meta.tp}, but the weights are split into {tp} shards"
            )
        notes: set[str] = set()
        params, version = _open_params(path, planned, notes)
        entries = {part.hf_name: _entry(param, part, meta) for param in params for part in param.spec.parts}
        entries.update(_unplaced_entries(path, meta, specs, kept, params[-1].dtype_name))
        flavor = "pr180" if layout.mlp == "MLPBitNet" else "pr178" if meta.flavor == "bitnet" else "main"
        info: dict = {"tensor_parallel": tp or 1, "rope_interleaved": meta.rope_interleaved, "nanotron_flavor": flavor}
        if version is not None:
            info["nanotron_version"] = version
        classes = {meta.scales[n].stored.linear_class for n in entries if n in meta.scales}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        ckpt = Checkpoint(NAME, path, meta.config, entries, _side_files(path), meta.notes + sorted(notes), info)
        ckpt.warnings = meta.warnings
        check_tensor_set(ckpt)
        return ckpt


register_reader(NanotronReader())
