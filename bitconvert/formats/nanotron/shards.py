"""The stored side of a Nanotron checkpoint: finding its weight files, checking their headers and
slice metadata, and reading rows of a parameter straight out of its rank files.

Everything here but :func:`read_rows` (and :func:`assemble_rows`, built on it) reads file names and
safetensors headers only; those two are the only places tensor bytes are read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
import numpy as np

from ...dtypes import FLOAT_NAMES, Dense, itemsize, numpy_dtype
from ...errors import CheckpointError
from ...io.safetensors import SafetensorsFile, StoredTensor, read_exact
from .layout import (
    DATA_KEY,
    METADATA_KEYS,
    SHARD_FILE_RE,
    ParamSpec,
    parse_pairs,
    parse_shape,
    resolve_box,
    tiling_problem,
)

Bounds = tuple[tuple[int, int], ...]


@dataclass
class Shard:
    file: SafetensorsFile
    tensor: StoredTensor
    pairs: list[tuple[Bounds, Bounds]]  # (local, global) as plain (start, stop) per dim


@dataclass
class StoredParam:
    spec: ParamSpec
    folder: Path
    shards: list[Shard]  # one entry covering everything for an unsharded file
    dtype_name: str  # as the shard headers name it ("BF16")


def _inside(p: Path, root: Path) -> bool:
    real = p.resolve()
    return real == root or root in real.parents


def scan_weight_files(path: Path) -> dict[str, list[Path]]:
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


def open_unsharded(spec: ParamSpec, folder: Path, f: Path) -> StoredParam:
    sf = SafetensorsFile(f)
    t = data_tensor(sf)
    if t.shape != spec.shape:
        raise CheckpointError(
            f, f"shape {list(t.shape)} does not match model_config.json, which implies {list(spec.shape)}"
        )
    whole = tuple((0, n) for n in t.shape)
    return StoredParam(spec, folder, [Shard(sf, t, [(whole, whole)])], t.dtype_name)


def data_tensor(sf: SafetensorsFile) -> StoredTensor:
    if set(sf.tensors) != {DATA_KEY}:
        raise CheckpointError(sf.path, f"a Nanotron weight file holds one tensor, 'data'; found {sorted(sf.tensors)}")
    t = sf.tensors[DATA_KEY]
    if t.dtype_name not in FLOAT_NAMES:
        raise CheckpointError(sf.path, f"weights must be float, found {t.dtype_name}")
    return t


def shard_ranks(files: list[Path], folder: Path) -> tuple[dict[int, Path], int, tuple[int, int]]:
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


def open_sharded(
    spec: ParamSpec, folder: Path, by_rank: dict[int, Path], notes: set[str], versions: dict[str, Path]
) -> StoredParam:
    """Open every rank's file and check that their metadata tiles the unsharded tensor exactly once."""
    tp = len(by_rank)
    shards: list[Shard] = []
    dtypes = set()
    global_boxes: list[Bounds] = []
    for rank in range(tp):
        f = by_rank[rank]
        sf = SafetensorsFile(f)
        t = data_tensor(sf)
        dtypes.add(t.dtype_name)
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
        shards.append(Shard(sf, t, pairs))
    if len(dtypes) > 1:
        raise CheckpointError(folder, f"shards disagree on dtype: {sorted(dtypes)}")
    problem = tiling_problem(global_boxes, spec.shape)
    if problem:
        raise CheckpointError(folder, f"shard metadata does not tile the tensor {list(spec.shape)}: {problem}")
    return StoredParam(spec, folder, shards, dtypes.pop())


def read_rows(shard: Shard, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of one stored shard as its stored values (numpy; bf16 as uint16 words),
    read with pread: only those bytes become resident."""
    t = shard.tensor
    shape = (stop - start, *t.shape[1:])
    word = numpy_dtype(t.dtype_name)
    row_bytes = math.prod(t.shape[1:]) * itemsize(t.dtype_name)
    n = (stop - start) * row_bytes
    if not n:
        return np.empty(shape, dtype=word)
    buf = read_exact(shard.file.path, t.offset + start * row_bytes, n, DATA_KEY)
    return np.frombuffer(buf, dtype=word).reshape(shape)


def assemble_rows(param: StoredParam, start: int, stop: int) -> Dense:
    """Rows ``[start, stop)`` of the unsharded parameter as stored, gathered from whichever ranks hold them."""
    out = np.empty((stop - start, *param.spec.shape[1:]), dtype=numpy_dtype(param.dtype_name))
    for shard in param.shards:
        for loc, glob in shard.pairs:
            g0, g1 = glob[0]
            a, b = max(g0, start), min(g1, stop)
            if a >= b:
                continue
            l0 = loc[0][0] + (a - g0)
            rows = read_rows(shard, l0, l0 + (b - a))
            dst = (slice(a - start, b - start), *(slice(x, y) for x, y in glob[1:]))
            src = (slice(None), *(slice(x, y) for x, y in loc[1:]))
            out[dst] = rows[src]
    return Dense(out, param.dtype_name)
