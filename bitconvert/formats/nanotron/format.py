"""``nanotron``: Nanotron checkpoints of any tensor-parallel size, read and written one parameter at a time.

Layout (FORMATS.md §5): ``model/model/<param path>/`` holds either ``model_weight.safetensors``
(norms) or one ``model_weight_pp-rank-P-of-N_tp-rank-R-of-T.safetensors`` per TP rank, each with a
single ``"data"`` tensor and metadata saying which slice of the unsharded tensor it holds. Reading
takes the TP size from the file names, checks that the metadata tiles every tensor exactly, and
copies each Hugging Face tensor's rows straight out of the rank files, so only that tensor is
resident. Writing builds one Nanotron parameter (e.g. a fused ``qkv_proj``) and cuts it per rank.

Nanotron's BitNet keeps latent float weights and quantizes each per-rank shard of a fused weight
with its own scale, so latent masters convert exactly while packed (ternary) weights can only be
approximated; see :class:`_Approximation`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...checkpoint import Checkpoint, TensorEntry, Value, as_dense, check_tensor_set
from ...config import ModelConfig
from ...errors import CheckpointError, UsageError
from ...safetensors_io import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    PlannedTensor,
    SafetensorsFile,
    SafetensorsWriter,
    StoredTensor,
    itemsize,
)
from ...scale_records import NANOTRON_SCALES_KEY, encode_record
from ...ternary import LinearClass, TernaryScale, TernaryWeight, absmean_quantize, recover_ternary
from .. import Progress, WriteReport, register_reader, register_writer
from ..hf.common import NOT_SIDE_FILES, copy_side_files
from .config import (
    CHECKPOINT_METADATA,
    CONFIG_YAML,
    MODEL_CONFIG,
    OWN_FILES,
    NanotronMeta,
    NanotronOptions,
    checkpoint_metadata_dict,
    config_yaml_text,
    dump_json,
    model_config_dict,
    read_meta,
)
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
    local_shape,
    padded_vocab,
    param_specs,
    parse_pairs,
    parse_shape,
    rank_slices,
    resolve_box,
    shard_file_name,
    shard_metadata,
    shard_problem,
    tiling_problem,
    to_interleaved,
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
    tw = _as_recorded(_load_latent(param, part, meta.rope_interleaved), meta.scales[part.hf_name])
    if tw is None:
        raise CheckpointError(param.folder, "weights changed since the checkpoint was opened", part.hf_name)
    return tw


def _side_files(path: Path) -> list[Path]:
    return [
        p
        for p in sorted(path.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name not in OWN_FILES and p.suffix not in NOT_SIDE_FILES
    ]


class NanotronReader:
    name = NAME

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / MODEL_CONFIG).is_file() and (path / "model").is_dir()

    def read(self, path: Path) -> Checkpoint:
        found = _scan_weight_files(path)
        root = path / "model" / "model"
        sub_norms = any(k.endswith((ATTN_SUB_NORM, FFN_SUB_NORM)) for k in found)
        meta = read_meta(path, sub_norms)
        cfg = meta.config
        specs = param_specs(cfg, meta.vocab_rows)
        known = {s.path for s in specs}
        for folder in sorted(found):
            if folder not in known:
                raise CheckpointError(root / folder, "unexpected parameter: model_config.json implies no such weight")
        # File names first: a wrong TP size is reported as such, not as the slices it then gets wrong.
        layout: list[tuple[ParamSpec, Path, list[Path], dict[int, Path] | None]] = []
        tp_sizes: dict[int, Path] = {}
        for spec in specs:
            folder = root / spec.path
            files = found.get(spec.path)
            if not files:
                raise CheckpointError(folder, "missing parameter: no weight file")
            if [f.name for f in files] == [UNSHARDED_FILE]:
                layout.append((spec, folder, files, None))
                continue
            if any(f.name == UNSHARDED_FILE for f in files):
                raise CheckpointError(folder, "holds both an unsharded file and tensor-parallel shards")
            by_rank, tp, _ = _shard_ranks(files, folder)
            tp_sizes.setdefault(tp, folder)
            if len(tp_sizes) > 1:
                (a, fa), (b, fb) = list(tp_sizes.items())[:2]
                where = fa.relative_to(path)
                raise CheckpointError(fb, f"mismatched ranks: {b} tensor-parallel shards here, {a} in {where}")
            layout.append((spec, folder, files, by_rank))
        tp = next(iter(tp_sizes), None)
        if tp is not None and meta.tp is not None and meta.tp != tp:
            raise CheckpointError(
                path / CHECKPOINT_METADATA, f"says tp={meta.tp}, but the weights are split into {tp} shards"
            )
        notes: set[str] = set()
        versions: dict[str, Path] = {}
        params = [
            _open_unsharded(spec, folder, files[0]) if by_rank is None
            else _open_sharded(spec, folder, by_rank, notes, versions)
            for spec, folder, files, by_rank in layout
        ]
        if len(versions) > 1:
            (va, fa), (vb, fb) = list(versions.items())[:2]
            raise CheckpointError(fb, f"checkpoint version {vb} differs from {va} in {fa.relative_to(path)}")

        entries: dict[str, TensorEntry] = {}
        recorded: dict[str, TernaryScale] = {}
        stale = 0
        for param in params:
            n = len(param.shards)
            how = f"{DTYPE_NAMES[param.dtype]}" + (f", {n} TP shards" if param.spec.sharded else "")
            if len(param.spec.parts) > 1:
                how += f", fused {param.spec.path.rsplit('/', 1)[-1]}"
            for part in param.spec.parts:
                hint = meta.scales.get(part.hf_name)
                # A weight bitconvert wrote from a packed one is that ternary weight while it is unchanged;
                # checked once here (one tensor resident) so that `ternary` is a fact, not a hope.
                if hint is not None and _as_recorded(_load_latent(param, part, meta.rope_interleaved), hint) is None:
                    hint, stale = None, stale + 1
                entries[part.hf_name] = TensorEntry(
                    part.hf_name,
                    (part.rows, *param.spec.shape[1:]),
                    hint[0].dtype if hint else param.dtype,
                    hint is not None,
                    str(param.folder),
                    (lambda param=param, part=part: _load_recorded(param, part, meta))
                    if hint
                    else (lambda param=param, part=part: _load_latent(param, part, meta.rope_interleaved)),
                    (lambda s=hint[0]: s) if hint else None,
                    stored=how + (" (latent of a packed weight)" if hint else ""),
                )
                if hint:
                    recorded[part.hf_name] = hint[0]
        if stale:
            notes.add(f"{stale} weights no longer match the ternary scales bitconvert recorded: read as latent weights")
        info: dict = {"tensor_parallel": tp or 1, "rope_interleaved": meta.rope_interleaved}
        if versions:
            info["nanotron_version"] = next(iter(versions))
        classes = {s.linear_class for s in recorded.values()}
        if len(classes) == 1:
            info["linear_class"] = classes.pop()
        ckpt = Checkpoint(NAME, path, cfg, entries, _side_files(path), meta.notes + sorted(notes), info)
        check_tensor_set(ckpt)
        return ckpt


# --- writing ------------------------------------------------------------------------------------


@dataclass
class _Approximation:
    """Packed weights written as latent ones, and how far Nanotron's own re-quantization lands from them.

    A ternary weight ``t`` with magnitude ``m`` is written as ``t * m / p`` (``p``: fraction of
    non-zero codes): Nanotron recomputes ``mean|W| = m`` from that, so one unfused, unsplit matrix
    comes back exactly. Fused and split weights get one scale per rank-local shard of the fused
    tensor instead of one per original tensor; the report measures that difference per tensor.
    """

    targets: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)  # codes in param row order, m
    scales: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)

    def latent_for(self, part: Part, tw: TernaryWeight, dtype: torch.dtype, rope: bool) -> torch.Tensor:
        codes = tw.codes
        if part.rope_heads and rope:
            codes = to_interleaved(codes, part.rope_heads)
        m = tw.scale.multiplier
        nonzero = int(codes.count_nonzero())
        written = torch.tensor(m * codes.numel() / nonzero if nonzero else 0.0, dtype=torch.float64).to(dtype)
        self.targets[part.hf_name] = (codes, m)
        self.scales[part.hf_name] = encode_record(tw.scale, written)
        return codes.to(dtype) * written

    def measure(self, spec: ParamSpec, effective: torch.Tensor) -> None:
        """Compare Nanotron's effective weight (per-rank quantized, in param rows) with the packed one."""
        for part in spec.parts:
            if part.hf_name not in self.targets:
                continue
            codes, m = self.targets.pop(part.hf_name)
            got = effective[part.start : part.start + part.rows].double()
            want = codes.double() * m
            norm = float(want.norm())
            err = float((got - want).norm())
            self.results[part.hf_name] = {
                "relative_error": err / norm if norm else err,
                "codes_changed": int((torch.sign(got).to(torch.int8) != codes).sum()),
            }


def _nanotron_effective(local: torch.Tensor) -> torch.Tensor:
    """What Nanotron's BitNet layer multiplies with: absmean-quantized with this shard's own scale (fp32)."""
    codes, mean_abs = absmean_quantize(local)
    return codes.float() * mean_abs


def _ternary_of(value: Value) -> TernaryWeight | None:
    """The ternary weight behind a value: stored codes, or a float that is exactly codes x one magnitude."""
    if isinstance(value, TernaryWeight):
        return value
    found = recover_ternary(value)
    if found is None:
        return None
    return TernaryWeight(found[0], TernaryScale(found[1], LinearClass.AUTOBITLINEAR))


def _approximation_refused(ckpt: Checkpoint, name: str) -> UsageError:
    return UsageError(
        f"{ckpt.path}: {name} is a ternary (packed) weight; Nanotron keeps latent weights and re-quantizes each "
        "per-rank shard of a fused weight with its own scale, so it can only be approximated: pass --allow-approximate"
    )


def _check_tensor_parallel(cfg: ModelConfig, specs: list[ParamSpec], tp: int) -> None:
    if cfg.num_key_value_heads % tp:
        raise UsageError(
            f"--tp {tp}: the model has {cfg.num_key_value_heads} key/value heads; Nanotron needs them to split evenly "
            "across ranks (its config check requires num_key_value_heads >= tp; it does not replicate key/value heads)"
        )
    if cfg.num_attention_heads % tp:
        raise UsageError(f"--tp {tp}: Nanotron needs num_attention_heads ({cfg.num_attention_heads}) divisible by tp")
    for spec in specs:
        problem = shard_problem(spec, tp)
        if problem:
            raise UsageError(f"--tp {tp}: {problem}")


class NanotronWriter:
    name = NAME
    writes_directory = True
    Options = NanotronOptions

    def write(self, ckpt: Checkpoint, out: Path, options: NanotronOptions, progress: Progress) -> WriteReport:
        opts = options
        cfg, tp, dtype = ckpt.config, opts.tp, options.dtype or torch.bfloat16
        vocab_rows = padded_vocab(cfg.vocab_size, tp)
        specs = param_specs(cfg, vocab_rows)
        _check_tensor_parallel(cfg, specs, tp)
        self._refuse_early(ckpt, opts)
        report = WriteReport(NAME)
        approx = _Approximation()
        how: Counter = Counter()
        root = out / "model" / "model"
        for i, spec in enumerate(specs):
            progress(i, len(specs), spec.path)
            full = self._build_param(ckpt, spec, opts, dtype, approx, how)
            folder = root / spec.path
            folder.mkdir(parents=True, exist_ok=True)
            if not spec.sharded:
                self._write_file(folder / UNSHARDED_FILE, full, None, out, report)
                continue
            # Packed-derived parts: rebuild Nanotron's effective weight rank by rank to measure the gap.
            measured = any(p.hf_name in approx.targets for p in spec.parts)
            effective = torch.empty(spec.shape, dtype=torch.float32) if measured else None
            for rank in range(tp):
                pairs = rank_slices(spec, tp, rank)
                local = torch.empty(local_shape(spec, tp), dtype=dtype)
                for loc, glob in pairs:
                    local[loc] = full[glob]
                meta = shard_metadata(spec, tp, rank, opts.nanotron_version)
                self._write_file(folder / shard_file_name(rank, tp), local, meta, out, report)
                if effective is not None:
                    eff = _nanotron_effective(local)
                    for loc, glob in pairs:
                        effective[glob] = eff[loc]
            if effective is not None:
                approx.measure(spec, effective)
        progress(len(specs), len(specs), "")
        self._write_side_files(ckpt, out, opts, vocab_rows, dtype, approx, report)
        report.ternary_sources = dict(how)
        report.details.update(tp=tp, nanotron_version=opts.nanotron_version, rope_interleaved=opts.rope_interleaved)
        if vocab_rows != cfg.vocab_size:
            report.details["vocab_padding"] = f"{cfg.vocab_size} -> {vocab_rows} rows (zeros) for tp={tp}"
        if approx.results:
            worst = max(approx.results, key=lambda n: approx.results[n]["relative_error"])
            report.details["approximation"] = approx.results
            report.warnings.append(
                f"{len(approx.results)} ternary weights approximated for Nanotron's per-(fused, per-rank) scale; "
                f"worst relative error {approx.results[worst]['relative_error']:.3g} on {worst}"
            )
        if cfg.rope_theta != 10000.0:
            report.warnings.append(
                f"model_config.json has no rope_theta field; this model's {cfg.rope_theta:g} is recorded in "
                f"{CHECKPOINT_METADATA} custom_metas.bitconvert.rope_theta for your Nanotron model to use"
            )
        return report

    @staticmethod
    def _refuse_early(ckpt: Checkpoint, opts: NanotronOptions) -> None:
        """Fail before writing when a weight is plainly ternary and approximation was not allowed."""
        if opts.allow_approximate:
            return
        names = [n for n in ckpt.config.quantized_linear_names() if n in ckpt.tensors]
        for name in names:
            if ckpt.tensors[name].ternary:
                raise _approximation_refused(ckpt, name)
        hinted = next((n for n in names if ckpt.tensors[n].load_scale is not None), None)
        if hinted is not None and _ternary_of(ckpt.tensors[hinted].load()) is not None:
            raise _approximation_refused(ckpt, hinted)

    @staticmethod
    def _build_param(ckpt, spec: ParamSpec, opts, dtype, approx: _Approximation, how: Counter) -> torch.Tensor:
        covered = sum(p.rows for p in spec.parts)
        full = (torch.zeros if covered < spec.shape[0] else torch.empty)(spec.shape, dtype=dtype)
        for part in spec.parts:
            value = ckpt.tensors[part.hf_name].load()
            tw = _ternary_of(value) if ckpt.is_quantized_linear(part.hf_name) else None
            if tw is not None:
                if not opts.allow_approximate:
                    raise _approximation_refused(ckpt, part.hf_name)
                w = approx.latent_for(part, tw, dtype, opts.rope_interleaved)
                how["approximated"] += 1
            else:
                w = as_dense(value, dtype)
                if part.rope_heads and opts.rope_interleaved:
                    w = to_interleaved(w, part.rope_heads)
                if ckpt.is_quantized_linear(part.hf_name):
                    how["latent"] += 1
            full[part.start : part.start + part.rows] = w
        return full

    @staticmethod
    def _write_file(path: Path, tensor: torch.Tensor, metadata, out: Path, report: WriteReport) -> None:
        planned = PlannedTensor(DATA_KEY, tensor.dtype, tuple(tensor.shape))
        with SafetensorsWriter(path, [planned], metadata) as w:
            w.write(DATA_KEY, tensor)
        report.files.append(path.relative_to(out).as_posix())
        report.tensors += 1
        report.bytes_written += planned.nbytes

    @staticmethod
    def _write_side_files(ckpt, out: Path, opts: NanotronOptions, vocab_rows: int, dtype, approx, report) -> None:
        cfg = ckpt.config
        mc = model_config_dict(cfg, vocab_rows)
        custom = {
            "hf_config": cfg.raw,
            "vocab_size": cfg.vocab_size,
            "rope_interleaved": opts.rope_interleaved,
            "rope_theta": cfg.rope_theta,
        }
        if cfg.spec.attn_sub_norm:
            custom["sub_norms"] = {cfg.spec.attn_sub_norm: ATTN_SUB_NORM, cfg.spec.ffn_sub_norm: FFN_SUB_NORM}
        if approx.scales:
            custom[NANOTRON_SCALES_KEY] = dict(sorted(approx.scales.items()))
        dump_json(out / MODEL_CONFIG, mc, sort_keys=False)
        (out / CONFIG_YAML).write_text(config_yaml_text(mc, opts.tp, dtype), encoding="utf-8")
        meta = checkpoint_metadata_dict(opts.nanotron_version, opts.tp, custom, cfg.max_position_embeddings)
        dump_json(out / CHECKPOINT_METADATA, meta, sort_keys=True)  # sorted, as Nanotron writes it
        report.files += [MODEL_CONFIG, CONFIG_YAML, CHECKPOINT_METADATA]
        report.files += copy_side_files([f for f in ckpt.side_files if f.name not in OWN_FILES], out)


register_reader(NanotronReader())
register_writer(NanotronWriter())
