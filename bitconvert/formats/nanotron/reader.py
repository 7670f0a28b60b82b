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
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...checkpoint import Checkpoint, TensorEntry, check_tensor_set
from ...errors import CheckpointError
from ...safetensors_io import DTYPE_NAMES, FLOAT_DTYPES, SafetensorsFile, StoredTensor, itemsize
from ...ternary import TernaryScale, TernaryWeight, recover_ternary
from .. import register_reader
from ..hf.common import NOT_SIDE_FILES
from .config import CHECKPOINT_METADATA, MODEL_CONFIG, OWN_FILES, NanotronMeta, read_meta
from .layout import (
    ATTN_SUB_NORM,
    DATA_KEY,
    FFN_SUB_NORM,
    METADATA_KEYS,
    SHARD_FILE_RE,
    UNSHARDED_FILE,
    ParamSpec,
    Part,
    from_interleaved,
    param_specs,
    parse_pairs,
    parse_shape,
    resolve_box,
    tiling_problem,
)

NAME = "nanotron"
Bounds = tuple[tuple[int, int], ...]


# --- reading ------------------------------------------------------------------------------------


@dataclass
class _Shard:
    file: SafetensorsFile
    tensor: StoredTensor
    pairs: list[tuple[Bounds, Bounds]]  # (local, global) as plain (start, stop) per dim


@dataclass
class _StoredParam:
    spec: ParamSpec
    folder: Path
    shards: list[_Shard]  # one entry covering everything for an unsharded file
    dtype: torch.dtype


def _inside(p: Path, root: Path) -> bool:
    real = p.resolve()
    return real == root or root in real.parents


def _scan_weight_files(path: Path) -> dict[str, list[Path]]:
    """``.safetensors`` files under model/model by folder (posix, relative); nothing may lead outside ``path``."""
    real_root = path.resolve()
    root = path / "model" / "model"
    if not root.is_dir():
        raise CheckpointError(path, "no model/model folder: not a Nanotron checkpoint")
    for p in (path / "model", root):
        if not _inside(p, real_root):
            raise CheckpointError(p, "points outside the checkpoint directory")
    found: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        if here.resolve() in seen:  # a link back to a folder already walked
            dirnames[:] = []
            continue
        seen.add(here.resolve())
        for name in dirnames:
            if not _inside(here / name, real_root):
                raise CheckpointError(here / name, "points outside the checkpoint directory")
        for name in sorted(filenames):
            f = here / name
            if not name.endswith(".safetensors"):
                continue
            # Folders are checked above; a file may be a link (the HF cache links every file to its blob store).
            found.setdefault(here.relative_to(root).as_posix(), []).append(f)
    return found


def _open_unsharded(spec: ParamSpec, folder: Path, f: Path) -> _StoredParam:
    sf = SafetensorsFile(f)
    t = _data_tensor(sf)
    if t.shape != spec.shape:
        raise CheckpointError(
            f, f"shape {list(t.shape)} does not match model_config.json, which implies {list(spec.shape)}"
        )
    whole = tuple((0, n) for n in t.shape)
    return _StoredParam(spec, folder, [_Shard(sf, t, [(whole, whole)])], t.dtype)


def _data_tensor(sf: SafetensorsFile) -> StoredTensor:
    if set(sf.tensors) != {DATA_KEY}:
        raise CheckpointError(sf.path, f"a Nanotron weight file holds one tensor, 'data'; found {sorted(sf.tensors)}")
    t = sf.tensors[DATA_KEY]
    if t.dtype not in FLOAT_DTYPES:
        raise CheckpointError(sf.path, f"weights must be float, found {DTYPE_NAMES[t.dtype]}")
    return t


def _shard_ranks(files: list[Path], folder: Path) -> tuple[dict[int, Path], int, tuple[int, int]]:
    """Rank -> file for one parameter, its TP size and (pp rank, pp size); one-line errors for gaps."""
    by_rank: dict[int, Path] = {}
    sizes, pps = set(), set()
    for f in files:
        m = SHARD_FILE_RE.fullmatch(f.name)
        if m is None:
            raise CheckpointError(f, "unexpected file name for a Nanotron weight shard")
        pp_rank, pp_size, tp_rank, tp_size = map(int, m.groups())
        if tp_rank >= tp_size or pp_rank >= pp_size:
            raise CheckpointError(f, "a rank in the file name is not below its size")
        if tp_rank in by_rank:
            raise CheckpointError(f, f"tp-rank {tp_rank} is stored twice (also in {by_rank[tp_rank].name})")
        by_rank[tp_rank] = f
        sizes.add(tp_size)
        pps.add((pp_rank, pp_size))
    if len(sizes) > 1:
        raise CheckpointError(folder, f"mismatched ranks: shards of tensor-parallel sizes {sorted(sizes)} side by side")
    if len(pps) > 1:
        raise CheckpointError(folder, f"mismatched ranks: shards claim pipeline stages {sorted(pps)}")
    tp = sizes.pop()
    missing = [r for r in range(tp) if r not in by_rank]
    if missing:
        raise CheckpointError(folder, f"missing shard tp-rank-{missing[0]}-of-{tp} ({len(missing)} of {tp} missing)")
    return by_rank, tp, pps.pop()


def _open_sharded(
    spec: ParamSpec, folder: Path, by_rank: dict[int, Path], notes: set[str], versions: dict[str, Path]
) -> _StoredParam:
    """Open every rank's file and check that their metadata tiles the unsharded tensor exactly once."""
    tp = len(by_rank)
    shards: list[_Shard] = []
    dtypes = set()
    global_boxes: list[Bounds] = []
    for rank in range(tp):
        f = by_rank[rank]
        sf = SafetensorsFile(f)
        t = _data_tensor(sf)
        dtypes.add(t.dtype)
        missing = [k for k in METADATA_KEYS if k not in sf.metadata]
        if missing:
            raise CheckpointError(f, f"shard metadata lacks {missing[0]!r} (Nanotron needs {', '.join(METADATA_KEYS)})")
        extra = sorted(set(sf.metadata) - set(METADATA_KEYS))
        if extra:
            notes.add(f"shard metadata carries extra keys {extra}; Nanotron's strict parser rejects them on reshard")
        versions.setdefault(sf.metadata["version"], f)
        try:
            shape = parse_shape(sf.metadata["unsharded_shape"])
            pairs = [
                (resolve_box(loc, t.shape), resolve_box(glob, shape))
                for loc, glob in parse_pairs(sf.metadata["local_global_slices_pairs"])
            ]
        except ValueError as exc:
            raise CheckpointError(f, f"bad shard metadata: {exc}") from None
        if shape != spec.shape:
            raise CheckpointError(
                f, f"unsharded_shape {shape} does not match model_config.json, which implies {spec.shape}"
            )
        for loc, glob in pairs:
            sizes = [b - a for a, b in loc], [b - a for a, b in glob]
            if sizes[0] != sizes[1]:
                raise CheckpointError(f, f"metadata maps a local slice of shape {sizes[0]} onto a global {sizes[1]}")
        problem = tiling_problem([loc for loc, _ in pairs], t.shape)
        if problem:
            raise CheckpointError(f, f"metadata does not tile the stored shard {list(t.shape)}: {problem}")
        global_boxes += [glob for _, glob in pairs]
        shards.append(_Shard(sf, t, pairs))
    if len(dtypes) > 1:
        raise CheckpointError(folder, f"shards disagree on dtype: {sorted(DTYPE_NAMES[d] for d in dtypes)}")
    problem = tiling_problem(global_boxes, spec.shape)
    if problem:
        raise CheckpointError(folder, f"shard metadata does not tile the tensor {list(spec.shape)}: {problem}")
    return _StoredParam(spec, folder, shards, dtypes.pop())


def _read_rows(shard: _Shard, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of one stored shard, read with pread: only those bytes become resident."""
    t = shard.tensor
    shape = (stop - start, *t.shape[1:])
    row_bytes = math.prod(t.shape[1:]) * itemsize(t.dtype)
    n = (stop - start) * row_bytes
    if not n:
        return torch.empty(shape, dtype=t.dtype)
    buf = bytearray(n)
    try:
        fd = os.open(shard.file.path, os.O_RDONLY)
        try:
            view, done = memoryview(buf), 0
            while done < n:
                got = os.preadv(fd, [view[done:]], t.offset + start * row_bytes + done)
                if got <= 0:
                    raise CheckpointError(shard.file.path, "file ended while reading the tensor", DATA_KEY)
                done += got
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckpointError(shard.file.path, f"cannot read: {exc.strerror or exc}") from None
    return torch.frombuffer(buf, dtype=t.dtype).reshape(shape)


def _assemble_rows(param: _StoredParam, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of the unsharded parameter, gathered from whichever ranks hold them."""
    out = torch.empty((stop - start, *param.spec.shape[1:]), dtype=param.dtype)
    for shard in param.shards:
        for loc, glob in shard.pairs:
            g0, g1 = glob[0]
            a, b = max(g0, start), min(g1, stop)
            if a >= b:
                continue
            l0 = loc[0][0] + (a - g0)
            rows = _read_rows(shard, l0, l0 + (b - a))
            dst = (slice(a - start, b - start), *(slice(x, y) for x, y in glob[1:]))
            src = (slice(None), *(slice(x, y) for x, y in loc[1:]))
            out[dst] = rows[src]
    return out


def _load_latent(param: _StoredParam, part: Part, rope_interleaved: bool) -> torch.Tensor:
    w = _assemble_rows(param, part.start, part.start + part.rows)
    if part.rope_heads and rope_interleaved:
        w = from_interleaved(w, part.rope_heads)
    return w


def _as_recorded(w: torch.Tensor, hint: tuple[TernaryScale, torch.Tensor]) -> TernaryWeight | None:
    """The packed weight bitconvert wrote as ``w``, if ``w`` is still exactly its codes x the magnitude written."""
    scale, written = hint
    if w.dtype != written.dtype:
        return None
    if not bool(w.any()):
        return TernaryWeight(torch.zeros(w.shape, dtype=torch.int8), scale)
    found = recover_ternary(w)
    if found is not None and torch.equal(found[1].reshape(()), written):
        return TernaryWeight(found[0], scale)
    return None


def _load_recorded(param: _StoredParam, part: Part, meta: NanotronMeta) -> TernaryWeight:
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
        by_rank, tp, _ = _shard_ranks(files, folder)
        tp_sizes.setdefault(tp, folder)
        if len(tp_sizes) > 1:
            (a, fa), (b, fb) = list(tp_sizes.items())[:2]
            raise CheckpointError(fb, f"mismatched ranks: {b} tensor-parallel shards here, {a} in {fa.relative_to(path)}")
        planned.append(_PlannedParam(spec, folder, by_rank, files))
    return planned, next(iter(tp_sizes), None)


def _open_params(path: Path, planned: list[_PlannedParam], notes: set[str]) -> tuple[list[_StoredParam], str | None]:
    """Every parameter's headers, checked; the one checkpoint version its shards state."""
    versions: dict[str, Path] = {}
    params = [
        _open_unsharded(p.spec, p.folder, p.files[0])
        if p.by_rank is None
        else _open_sharded(p.spec, p.folder, p.by_rank, notes, versions)
        for p in planned
    ]
    if len(versions) > 1:
        (va, fa), (vb, fb) = list(versions.items())[:2]
        raise CheckpointError(fb, f"checkpoint version {vb} differs from {va} in {fa.relative_to(path)}")
    return params, next(iter(versions), None)


def _entry(param: _StoredParam, part: Part, meta: NanotronMeta) -> TensorEntry:
    """The lazy tensor for one HF tensor inside ``param``; nothing is read until it is loaded."""
    n = len(param.shards)
    how = DTYPE_NAMES[param.dtype] + (f", {n} TP shards" if param.spec.sharded else "")
    if len(param.spec.parts) > 1:
        how += f", fused {param.spec.path.rsplit('/', 1)[-1]}"
    shape = (part.rows, *param.spec.shape[1:])
    hint = meta.scales.get(part.hf_name)
    if hint is None:
        load = lambda: _load_latent(param, part, meta.rope_interleaved)
        return TensorEntry(part.hf_name, shape, param.dtype, False, str(param.folder), load, stored=how)
    # A weight bitconvert wrote from a packed one is that ternary weight while it is unchanged.
    return TensorEntry(
        part.hf_name,
        shape,
        hint[0].dtype,
        True,
        str(param.folder),
        lambda: _load_recorded(param, part, meta),
        lambda: hint[0],
        stored=how + " (latent of a packed weight)",
    )


class NanotronReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / MODEL_CONFIG).is_file() and (path / "model").is_dir()

    def read(self, path: Path) -> Checkpoint:
        """Open ``path``: file names, safetensors headers and side files only, never tensor data."""
        found = _scan_weight_files(path)
        sub_norms = any(k.endswith((ATTN_SUB_NORM, FFN_SUB_NORM)) for k in found)
        meta = read_meta(path, sub_norms)
        planned, tp = _plan_files(path, param_specs(meta.config, meta.vocab_rows), found)
        if tp is not None and meta.tp is not None and meta.tp != tp:
            raise CheckpointError(
                path / CHECKPOINT_METADATA, f"says tp={meta.tp}, but the weights are split into {tp} shards"
            )
        notes: set[str] = set()
        params, version = _open_params(path, planned, notes)
        entries = {part.hf_name: _entry(param, part, meta) for param in params for part in param.spec.parts}
        info: dict = {"tensor_parallel": tp or 1, "rope_interleaved": meta.rope_interleaved}
        if version is not None:
            info["nanotron_version"] = version
        classes = {meta.scales[n][0].linear_class for n in entries if n in meta.scales}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        ckpt = Checkpoint(NAME, path, meta.config, entries, _side_files(path), meta.notes + sorted(notes), info)
        check_tensor_set(ckpt)
        return ckpt


register_reader(NanotronReader())
