"""Writing Nanotron checkpoints: one Nanotron parameter (e.g. a fused ``qkv_proj``) built and cut per rank.

Nanotron's BitNet keeps latent float weights and quantizes each per-rank shard of a fused weight
with its own scale, so latent masters convert exactly while packed (ternary) weights can only be
approximated; see :class:`_Approximation`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...dtypes import Dense, float_bits, itemsize, numpy_dtype
from ...errors import CheckpointError, UsageError
from ...io.safetensors import PlannedTensor, SafetensorsWriter
from ...model.checkpoint import Checkpoint, Kind, TensorEntry, Value, as_dense
from ...model.config import ModelConfig
from ...ternary import TernaryWeight, absmean_quantize, recover_ternary
from ...ternary.quantize import matches_record
from ...ternary.records import NANOTRON_SCALES_KEY, encode_record
from .. import Progress, WriteReport, register_writer
from ..hf.common import copy_side_files
from .config import (
    CHECKPOINT_METADATA,
    CONFIG_YAML,
    KEPT_FILE,
    MODEL_CONFIG,
    OWN_FILES,
    NanotronOptions,
    checkpoint_metadata_dict,
    config_yaml_text,
    dump_json,
    model_config_dict,
)
from .flavors import DEFAULT_FLAVOR, FLAVORS, Flavor, losses
from .layout import (
    DATA_KEY,
    UNSHARDED_FILE,
    ModelLayout,
    ParamSpec,
    Part,
    local_shape,
    padded_vocab,
    param_specs,
    rank_slices,
    shard_file_name,
    shard_metadata,
    shard_problem,
    to_interleaved,
    unplaced_tensors,
)

NAME = "nanotron"


@dataclass
class _Approximation:
    """Packed weights written as latent ones, and how far Nanotron's own re-quantization lands from them.

    A ternary weight ``t`` with magnitude ``m`` is written as ``t * m / p`` (``p``: fraction of
    non-zero codes): Nanotron recomputes ``mean|W| = m`` from that, so one unfused, unsplit matrix
    comes back exactly. Fused and split weights get one scale per rank-local shard of the fused
    tensor instead of one per original tensor; the report measures that difference per tensor.
    """

    targets: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)  # codes in param row order, m
    scales: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, dict[str, float]] = field(default_factory=dict)

    def latent_for(self, part: Part, tw: TernaryWeight, dtype_name: str, rope: bool) -> Dense:
        codes = tw.codes
        if part.rope_heads and rope:
            codes = np.ascontiguousarray(to_interleaved(codes, part.rope_heads))
        m = tw.scale.multiplier
        nonzero = int(np.count_nonzero(codes))
        # m / p in float64, rounded once into the written dtype (as torch's float64 -> dtype cast)
        word = float_bits(m * codes.size / nonzero if nonzero else 0.0, dtype_name)
        self.targets[part.hf_name] = (codes, m)
        self.scales[part.hf_name] = encode_record(tw.scale, (dtype_name, word.to_bytes(itemsize(dtype_name), "little")))
        return _times_word(codes, word, dtype_name)

    def measure(self, spec: ParamSpec, effective: np.ndarray) -> None:
        """Compare Nanotron's effective weight (per-rank quantized, float32, in param rows) with the packed one."""
        for part in spec.parts:
            if part.hf_name not in self.targets:
                continue
            codes, m = self.targets.pop(part.hf_name)
            got = effective[part.start : part.start + part.rows].astype(np.float64)
            want = codes.astype(np.float64) * m
            norm = float(np.linalg.norm(want))
            err = float(np.linalg.norm(got - want))
            self.results[part.hf_name] = {
                "relative_error": err / norm if norm else err,
                "codes_changed": int(np.count_nonzero(np.sign(got).astype(np.int8) != codes)),
            }


def _times_word(codes: np.ndarray, word: int, dtype_name: str) -> Dense:
    """codes x the value whose stored word is ``word``: exactly -word, +0 or +word, as torch's product gives."""
    sign = 1 << (8 * itemsize(dtype_name) - 1)
    words = np.zeros(codes.shape, dtype=numpy_dtype(dtype_name)).view(f"<u{itemsize(dtype_name)}")
    words[codes > 0] = word
    words[codes < 0] = word | sign
    return Dense(words.view(numpy_dtype(dtype_name)), dtype_name)


def _nanotron_effective(local: Dense) -> np.ndarray:
    """What Nanotron's BitNet layer multiplies with: absmean-quantized with this shard's own scale (fp32)."""
    codes, mean_abs = absmean_quantize(local)
    return codes.astype(np.float32) * np.float32(mean_abs)


def _ternary_of(entry: TensorEntry, value: Value) -> TernaryWeight | None:
    """The ternary weight behind a value: stored codes, floats still exactly codes x the scale their
    record names (that exact scale), or floats that are exactly codes x one magnitude; None for a
    latent weight (floats written for online quantization that no longer match their record are latent)."""
    if isinstance(value, TernaryWeight):
        return value
    if entry.record is not None:
        kept = matches_record(value, entry.record)
        if kept is not None or entry.record.online:
            return kept
    return recover_ternary(value)


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


def _flavor_and_rope(ckpt: Checkpoint, opts: NanotronOptions) -> tuple[Flavor, bool | None]:
    """The flavor asked for, else a Nanotron source's own (a reshard changes the TP size only, and
    keeps the source's RoPE row order where not told otherwise), else the default; and the RoPE order
    asked for or kept (None: the flavor's)."""
    source = ckpt.facts.nanotron
    if opts.flavor is not None or source is None or source.flavor not in FLAVORS:
        return FLAVORS[opts.flavor or DEFAULT_FLAVOR], opts.rope_interleaved
    flavor = FLAVORS[source.flavor]
    rope = opts.rope_interleaved
    if rope is None and flavor.rope_in_config:
        rope = source.rope_interleaved
    return flavor, rope


def _lossy_refused(ckpt: Checkpoint, flavor: Flavor, lost: list[str]) -> CheckpointError:
    """The one-line refusal of a lossy conversion, naming a flavor that would hold the model whole, if any."""
    whole = next((f.name for f in FLAVORS.values() if f is not flavor and not losses(ckpt.config, f)), None)
    source = ckpt.facts.nanotron
    if whole is None and source is not None and source.flavor in FLAVORS and source.flavor != flavor.name:
        whole = f"{source.flavor} (SRC's own, which loses nothing more)"
    return CheckpointError(
        ckpt.path,
        f"--nanotron-flavor {flavor.name} would lose {'; '.join(lost)}. Pass --allow-lossy to convert anyway"
        + (f" or try --nanotron-flavor {whole}" if whole else ""),
    )


def _resolve(ckpt: Checkpoint, opts: NanotronOptions) -> _Plan:
    """What will be written, checked against the flavor before anything is: refusals come first."""
    cfg, tp = ckpt.config, opts.tp
    if not cfg.family.nanotron:
        raise UsageError(f"--to nanotron: no Nanotron model holds the {cfg.family.key} family ({cfg.family.title})")
    flavor, rope = _flavor_and_rope(ckpt, opts)
    if rope is None:
        rope = not flavor.rope_in_config  # PR #180 interleaves; main's config default keeps HF order
    elif not rope and not flavor.rope_in_config:
        raise UsageError(f"--no-rope-interleaved: {flavor.title} applies interleaved RoPE only (use --nanotron-flavor main)")
    version = opts.nanotron_version or flavor.versions[0]
    if version not in flavor.versions:
        raise UsageError(f"--nanotron-version {version}: {flavor.title} loads checkpoint version {flavor.versions[0]} only")
    vocab_rows = padded_vocab(cfg.vocab_size, tp)
    specs = param_specs(cfg, vocab_rows, ModelLayout(flavor.mlp, flavor.decoder_norms))
    _check_tensor_parallel(cfg, specs, tp)
    lost = losses(cfg, flavor)  # after the usage errors: a bad option is reported as such first
    # a reshard into SRC's own flavor loses nothing SRC still had: what the flavor cannot hold, SRC lacks already
    inherited = ckpt.facts.nanotron is not None and ckpt.facts.nanotron.flavor == flavor.name
    if lost and not opts.allow_lossy and not inherited:
        raise _lossy_refused(ckpt, flavor, lost)
    return _Plan(flavor, tp, opts.dtype or ckpt.model_dtype(), rope, version, vocab_rows, specs, lost, inherited)


@dataclass
class _Plan:
    flavor: Flavor
    tp: int
    dtype: str  # the written parameters' dtype name ("BF16")
    rope_interleaved: bool
    version: str
    vocab_rows: int
    specs: list[ParamSpec]
    lost: list[str]
    #: the losses are SRC's own: SRC is a checkpoint of this flavor (a reshard)
    inherited: bool = False


class NanotronWriter:
    name = NAME
    Options = NanotronOptions
    #: the compiled loops quantizing a master runs (see convert: compiled ahead)
    kernels = ("block_abs_sums", "codes_flat")

    def write(self, ckpt: Checkpoint, out: Path, options: NanotronOptions, progress: Progress) -> WriteReport:
        plan = _resolve(ckpt, options)
        self._refuse_early(ckpt, options)
        report = WriteReport(NAME)
        approx = _Approximation()
        how: Counter = Counter()
        for i, spec in enumerate(plan.specs):
            progress(i, len(plan.specs), spec.path)
            full = self._build_param(ckpt, spec, options, plan, approx, how)
            self._write_param(spec, full, plan, out, approx, report)
        progress(len(plan.specs), len(plan.specs), "")
        kept = self._write_kept(ckpt, plan, out, report)
        self._write_side_files(ckpt, out, plan, approx, kept, report)
        self._finish_report(ckpt.config, plan, approx, how, report)
        return report

    def _write_param(self, spec: ParamSpec, full: np.ndarray, plan: _Plan, out: Path, approx, report) -> None:
        folder = out / "model" / "model" / spec.path
        folder.mkdir(parents=True, exist_ok=True)
        if not spec.sharded:
            self._write_file(folder / UNSHARDED_FILE, Dense(full, plan.dtype), None, out, report)
            return
        # Packed-derived parts: rebuild Nanotron's effective weight rank by rank to measure the gap.
        measured = any(p.hf_name in approx.targets for p in spec.parts)
        effective = np.empty(spec.shape, dtype=np.float32) if measured else None
        for rank in range(plan.tp):
            pairs = rank_slices(spec, plan.tp, rank)
            local = np.empty(local_shape(spec, plan.tp), dtype=full.dtype)
            for loc, glob in pairs:
                local[loc] = full[glob]
            meta = shard_metadata(spec, plan.tp, rank, plan.version)
            self._write_file(folder / shard_file_name(rank, plan.tp), Dense(local, plan.dtype), meta, out, report)
            if effective is not None:
                eff = _nanotron_effective(Dense(local, plan.dtype))
                for loc, glob in pairs:
                    effective[glob] = eff[loc]
        if effective is not None:
            approx.measure(spec, effective)

    @staticmethod
    def _write_kept(ckpt: Checkpoint, plan: _Plan, out: Path, report: WriteReport) -> list[str]:
        """Tensors the flavor's model has no parameter for, beside the model where Nanotron never looks.

        Only reached with --allow-lossy, or in a reshard of a checkpoint written so. Nanotron neither
        loads nor saves them; they let bitconvert give the source back exactly from this very checkpoint.
        """
        names = unplaced_tensors(ckpt.config, plan.specs)
        if not names:
            return []
        shapes = ckpt.config.expected_shapes()
        planned = [PlannedTensor(n, plan.dtype, shapes[n]) for n in names]
        with SafetensorsWriter(out / KEPT_FILE, planned, None) as w:
            for name in names:
                w.write(name, as_dense(ckpt.tensors[name].load(), plan.dtype))
        report.files.append(KEPT_FILE)
        report.tensors += len(names)
        report.bytes_written += sum(p.nbytes for p in planned)
        return names

    @staticmethod
    def _finish_report(cfg, plan: _Plan, approx: _Approximation, how: Counter, report: WriteReport) -> None:
        report.ternary_sources = dict(how)
        report.details.update(
            flavor=plan.flavor.name, tp=plan.tp, nanotron_version=plan.version, rope_interleaved=plan.rope_interleaved
        )
        if plan.vocab_rows != cfg.vocab_size:
            report.details["vocab_padding"] = f"{cfg.vocab_size} -> {plan.vocab_rows} rows (zeros) for tp={plan.tp}"
        if approx.results:
            worst = max(approx.results, key=lambda n: approx.results[n]["relative_error"])
            report.details["approximation"] = approx.results
            report.warnings.append(
                f"{len(approx.results)} ternary weights approximated for Nanotron's per-(fused, per-rank) scale; "
                f"worst relative error {approx.results[worst]['relative_error']:.3g} on {worst}"
            )
        already = f" (as in SRC, a {plan.flavor.name} checkpoint)" if plan.inherited else ""
        report.warnings += [f"lost in Nanotron ({plan.flavor.name}): {loss}{already}" for loss in plan.lost]

    @staticmethod
    def _refuse_early(ckpt: Checkpoint, opts: NanotronOptions) -> None:
        """Fail before writing when a weight is plainly ternary and approximation was not allowed."""
        if opts.allow_approximate:
            return
        names = [n for n in ckpt.config.quantized_linear_names() if n in ckpt.tensors]
        for name in names:
            if ckpt.tensors[name].kind is Kind.TERNARY:
                raise _approximation_refused(ckpt, name)
        recorded = next((n for n in names if ckpt.tensors[n].record is not None), None)
        if recorded is not None and _ternary_of(ckpt.tensors[recorded], ckpt.tensors[recorded].load()) is not None:
            raise _approximation_refused(ckpt, recorded)

    @staticmethod
    def _build_param(ckpt, spec: ParamSpec, opts, plan: _Plan, approx: _Approximation, how: Counter) -> np.ndarray:
        """The unsharded parameter as stored values of ``plan.dtype`` (bf16 as its words)."""
        covered = sum(p.rows for p in spec.parts)
        full = (np.zeros if covered < spec.shape[0] else np.empty)(spec.shape, dtype=numpy_dtype(plan.dtype))
        for part in spec.parts:
            entry = ckpt.tensors[part.hf_name]
            value = entry.load()
            quantized = ckpt.is_quantized_linear(part.hf_name)
            tw = _ternary_of(entry, value) if quantized else None
            if tw is not None:
                if not opts.allow_approximate:
                    raise _approximation_refused(ckpt, part.hf_name)
                w = approx.latent_for(part, tw, plan.dtype, plan.rope_interleaved).data
                how["approximated"] += 1
            else:
                w = as_dense(value, plan.dtype).data
                if part.rope_heads and plan.rope_interleaved:
                    w = to_interleaved(w, part.rope_heads)
                if quantized:
                    how["latent"] += 1
            full[part.start : part.start + part.rows] = w
        return full

    @staticmethod
    def _write_file(path: Path, value: Dense, metadata, out: Path, report: WriteReport) -> None:
        planned = PlannedTensor(DATA_KEY, value.dtype_name, value.shape)
        with SafetensorsWriter(path, [planned], metadata) as w:
            w.write(DATA_KEY, value)
        report.files.append(path.relative_to(out).as_posix())
        report.tensors += 1
        report.bytes_written += planned.nbytes

    @staticmethod
    def _write_side_files(ckpt, out: Path, plan: _Plan, approx, kept: list[str], report) -> None:
        cfg = ckpt.config
        mc = model_config_dict(cfg, plan.vocab_rows, plan.flavor, plan.rope_interleaved)
        custom = {
            "hf_config": cfg.raw,
            "vocab_size": cfg.vocab_size,
            "rope_interleaved": plan.rope_interleaved,
            "rope_theta": cfg.rope_theta,
            "flavor": plan.flavor.name,
        }
        if plan.lost:
            custom["lost"] = plan.lost
        if kept:
            custom["kept"] = {"file": KEPT_FILE, "tensors": kept}
        if approx.scales:
            custom[NANOTRON_SCALES_KEY] = dict(sorted(approx.scales.items()))
        dump_json(out / MODEL_CONFIG, mc, sort_keys=False)
        (out / CONFIG_YAML).write_text(config_yaml_text(mc, plan.tp, plan.dtype), encoding="utf-8")
        meta = checkpoint_metadata_dict(plan.version, plan.tp, custom, cfg.max_position_embeddings)
        dump_json(out / CHECKPOINT_METADATA, meta, sort_keys=True)  # sorted, as Nanotron writes it
        report.files += [MODEL_CONFIG, CONFIG_YAML, CHECKPOINT_METADATA]
        report.files += copy_side_files([f for f in ckpt.side_files if f.name not in OWN_FILES], out)


register_writer(NanotronWriter())
