"""Reading Nanotron checkpoints of any tensor-parallel size, one Hugging Face tensor at a time.

Layout (docs/nanotron.md): ``model/model/<param path>/`` holds either ``model_weight.safetensors``
(norms) or one ``model_weight_pp-rank-P-of-N_tp-rank-R-of-T.safetensors`` per TP rank, each with a
single ``"data"`` tensor and metadata saying which slice of the unsharded tensor it holds. Opening
reads file names, headers and side files only: it takes the TP size from the file names and checks
that the metadata tiles every tensor exactly. Loading a tensor copies its rows straight out of the
rank files, so only that tensor is resident.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...dtypes import FLOAT_NAMES, Dense
from ...errors import CheckpointError
from ...io.provenance import read_provenance_file
from ...io.safetensors import SafetensorsFile
from ...model.checkpoint import (
    Checkpoint, Kind, NanotronFacts, Stored, TensorEntry, check_tensor_set, float_stored,
)  # fmt: skip
from ...ternary.quantize import matches_record
from ...ternary.records import ScaleRecord
from ...ternary.stats import float_code_counts
from ...ternary.weight import TernaryWeight
from .. import register_reader
from ..hf.common import NOT_SIDE_FILES
from .config import CHECKPOINT_METADATA, KEPT_FILE, MODEL_CONFIG, OWN_FILES, NanotronMeta, read_meta
from .flavors import decoder_norm_paths
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
from .shards import StoredParam, assemble_rows, open_sharded, open_unsharded, scan_weight_files, shard_ranks

NAME = "nanotron"


def _load_latent(param: StoredParam, part: Part, rope_interleaved: bool) -> Dense:
    """The HF tensor ``part`` of ``param`` as stored: its rows gathered from the ranks, q/k rows put
    back in HF order where Nanotron keeps them interleaved."""
    w = assemble_rows(param, part.start, part.start + part.rows)
    if part.rope_heads and rope_interleaved:
        return Dense(np.ascontiguousarray(from_interleaved(w.data, part.rope_heads)), w.dtype_name)
    return w


def _stored(param: StoredParam, part: Part, rope_interleaved: bool, record: ScaleRecord | None) -> Stored:
    """The tensor's stored floats (gathered across ranks, HF row order); for a weight bitconvert wrote
    from a ternary one, its codes counted off the bits against the magnitude written."""
    raw = _load_latent(param, part, rope_interleaved).raw()
    if record is None:
        return float_stored(raw, param.dtype_name)
    written = record.written
    if written is None or written[0] != param.dtype_name:  # loading decides what it is
        return Stored(raw, "floats", param.dtype_name, record.scale)
    magnitude = int.from_bytes(written[1], "little")
    return Stored(raw, "floats", param.dtype_name, record.scale, lambda: float_code_counts(raw, param.dtype_name, magnitude))


def _load_recorded(param: StoredParam, part: Part, meta: NanotronMeta) -> TernaryWeight:
    """The ternary weight behind a latent one bitconvert wrote from a packed source.

    Checked here, when the tensor is loaded anyway, and not at open: opening reads no tensor data.
    A weight that changed since (edited in place; Nanotron's own saves drop the record) is an
    error rather than a silent switch to latent, because a writer may already have used the
    recorded scale (``stored().scale``) for this tensor.
    """
    tw = matches_record(_load_latent(param, part, meta.rope_interleaved), meta.scales[part.hf_name])
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
    rope = meta.rope_interleaved
    record = meta.scales.get(part.hf_name)
    if record is None:
        kind = Kind.LATENT if meta.config.is_quantized_linear(part.hf_name) else Kind.DENSE
        return TensorEntry(
            part.hf_name, shape, kind, param.dtype_name, str(param.folder), lambda: _load_latent(param, part, rope),
            lambda: _stored(param, part, rope, None), how,
        )  # fmt: skip
    # A weight bitconvert wrote from a packed one is that ternary weight while it is unchanged.
    return TensorEntry(
        part.hf_name, shape, Kind.TERNARY, record.scale.dtype_name, str(param.folder),
        lambda: _load_recorded(param, part, meta), lambda: _stored(param, part, rope, record),
        how + " (latent of a packed weight)",
    )  # fmt: skip


def _layout_of(found: dict[str, list[Path]]) -> ModelLayout:
    """Which of the Nanotron codebases' folder layouts the weight folders follow (see flavors.py)."""
    mlp = "MLPBitNet" if any("/pp_block/MLPBitNet/" in k for k in found) else "mlp"
    norms = any(k.endswith(("/input_layernorm", "/post_attention_layernorm")) for k in found)
    sub_norms = any(k.endswith((ATTN_SUB_NORM, FFN_SUB_NORM)) for k in found)
    return ModelLayout(mlp, norms, sub_norms)


def _open_kept(path: Path) -> SafetensorsFile | None:
    f = path / KEPT_FILE
    return SafetensorsFile(f) if f.is_file() else None


def _ones(shape: tuple[int, ...], dtype: str) -> Dense:
    return Dense.from_float32(np.ones(shape, dtype=np.float32), dtype)


def _unplaced_entries(
    path: Path, meta: NanotronMeta, specs: list[ParamSpec], kept: SafetensorsFile | None, dtype: str
) -> dict[str, TensorEntry]:
    """Tensors the model has but no parameter folder holds: from bitconvert's kept file, else decoder
    norms of a model without them (PR #180) as ones, with a warning."""
    shapes = meta.config.expected_shapes()
    decoder_norms = tuple(f".{p}.weight" for p in decoder_norm_paths(meta.config))
    out: dict[str, TensorEntry] = {}
    ones = []
    for name in unplaced_tensors(meta.config, specs):
        stored = kept.tensors.get(name) if kept is not None else None
        if stored is not None:
            if stored.shape != shapes[name] or stored.dtype_name not in FLOAT_NAMES:
                raise CheckpointError(kept.path, f"holds shape {list(stored.shape)}, the model needs {list(shapes[name])}", name)
            out[name] = TensorEntry(
                name, shapes[name], Kind.DENSE, stored.dtype_name, str(kept.path), lambda kept=kept, name=name: kept.read(name),
                lambda kept=kept, name=name, t=stored: float_stored(kept.read_bytes(name), t.dtype_name), "kept beside",
            )  # fmt: skip
        elif decoder_norms and name.endswith(decoder_norms):
            ones.append(name)
            out[name] = TensorEntry(
                name, shapes[name], Kind.DENSE, dtype, "(none)", lambda shape=shapes[name]: _ones(shape, dtype),
                lambda shape=shapes[name]: float_stored(_ones(shape, dtype).raw(), dtype), "absent: ones",
            )  # fmt: skip
        else:
            raise CheckpointError(path / KEPT_FILE, "missing parameter: neither a weight folder nor this file holds it", name)
    if ones:
        meta.warnings.append(
            f"{len(ones)} decoder norm weights ({', '.join(decoder_norm_paths(meta.config))}) are not in this "
            "checkpoint (PR #180's model has none): read as ones"
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
        flavor = "pr180" if layout.mlp == "MLPBitNet" else "pr178" if meta.bitnet_config else "main"
        ckpt = Checkpoint(NAME, path, meta.config, entries, _side_files(path), meta.notes + sorted(notes))
        ckpt.facts.nanotron = NanotronFacts(tp or 1, meta.rope_interleaved, flavor, version)
        classes = {meta.scales[n].scale.linear_class for n in entries if n in meta.scales}
        if len(classes) == 1:
            ckpt.facts.linear_class = classes.pop()
        ckpt.origin.recorded_provenance = read_provenance_file(path)
        ckpt.warnings = meta.warnings
        check_tensor_set(ckpt)
        return ckpt


register_reader(NanotronReader())
