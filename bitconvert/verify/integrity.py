"""``verify SRC``: is the checkpoint whole and self-consistent? Reads every tensor once, in turn."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from ..model.checkpoint import Checkpoint, TensorEntry
from ..model.config import QuantMode
from ..dtypes import dtype_name, is_float_dtype, itemsize, torch_name
from ..errors import CheckpointError
from ..formats import Progress, no_progress, open_checkpoint
from ..io.jsonfile import parse_json_text
from ..ternary.stats import counts_stats, packed_code_counts
from ..ternary.stored import EXPONENT_BITS, StoredScale, non_finite_bits
from .manifest import (
    check_manifest,
    new_manifest,
    packed_ternary_digest,
    read_manifest,
    stored_dense_digest,
    tensor_digest,
)
from .report import Check, VerifyReport

if TYPE_CHECKING:  # tensors whose reader keeps their stored bytes are checked on those, without torch
    import torch

    from ..ternary import TernaryScale

#: load failures that mean "this tensor is unreadable" rather than a bug in bitconvert
READ_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
Loaded = tuple[Literal["packed", "stored", "value", "error"], Any]


def verify_integrity(
    src: str | Path,
    *,
    manifest_check: str | Path | dict[str, Any] | None = None,
    format: str | None = None,
    progress: Progress = no_progress,
    digests: bool = True,
) -> VerifyReport:
    """Integrity checks of one checkpoint in any format the project reads.

    Checks: the checkpoint opens; config consistency; the tensor set and shapes the config implies;
    every tensor readable with the right dtype; ternary codes in {-1, 0, 1} and scales finite and
    positive; dense tensors finite; side files (tokenizer) present and parseable. The report's
    ``manifest`` holds a sha256 per tensor; ``manifest_check`` (a path or a loaded manifest) adds
    one check per tensor against it. ``digests=False`` skips the hashing (a quarter of the time
    of a packed model's checks) where no manifest is wanted: ``report.manifest`` is then None.
    Raises only ``UsageError`` (SRC does not exist, bad format
    name) or ``CheckpointError`` for an unreadable ``manifest_check`` file; every problem of the
    checkpoint itself is a failed check.
    """
    report = VerifyReport(str(src), mode="integrity")
    expected_manifest = None
    if manifest_check is not None:
        expected_manifest = manifest_check if isinstance(manifest_check, dict) else read_manifest(manifest_check)
    try:
        ckpt = open_checkpoint(src, format)
    except CheckpointError as exc:
        report.add(Check("open", False, f"{exc.path}: {exc.problem}", exc.tensor))
        return report
    cfg = ckpt.config
    summary = f"{ckpt.format}, architecture {cfg.architecture.value}, {len(ckpt.tensors)} tensors"
    report.add(Check("open", True, summary))
    for note in ckpt.notes:
        report.notes.append(note)
    _config_checks(ckpt, report)
    _tensor_set_checks(ckpt, report)
    found = _tensor_checks(ckpt, report, progress, digests or expected_manifest is not None)
    _side_file_checks(ckpt, report)
    if digests:
        report.manifest = new_manifest(ckpt.format, {k: v for k, v in found.items() if v is not None})
    if expected_manifest is not None:
        for c in check_manifest(expected_manifest, found):
            report.add(c)
    report.figures.update(
        tensors=len(ckpt.tensors),
        ternary_tensors=sum(1 for n in ckpt.tensors if ckpt.is_quantized_linear(n)),
        failed=len(report.failures),
    )
    return report


def _config_checks(ckpt: Checkpoint, report: VerifyReport) -> None:
    cfg = ckpt.config
    problems = list(cfg.problems())
    if "head_dim" not in cfg.raw and cfg.hidden_size % cfg.num_attention_heads:
        problems.append(
            f"num_attention_heads ({cfg.num_attention_heads}) does not divide hidden_size ({cfg.hidden_size})"
        )
    for key in ("bos_token_id", "eos_token_id"):
        ids = getattr(cfg, key)
        for i in ids if isinstance(ids, list) else [ids]:
            if i is not None and not (isinstance(i, int) and 0 <= i < cfg.vocab_size):
                problems.append(f"{key} {i!r} is not a token id below vocab_size {cfg.vocab_size}")
    if cfg.max_position_embeddings <= 0:
        problems.append(f"max_position_embeddings must be positive, got {cfg.max_position_embeddings}")
    has_head = "lm_head.weight" in ckpt.tensors
    if cfg.tie_word_embeddings and has_head:
        problems.append("tie_word_embeddings is true but the checkpoint holds lm_head.weight")
    if not cfg.tie_word_embeddings and not has_head:
        problems.append("tie_word_embeddings is false but the checkpoint holds no lm_head.weight")
    if cfg.duplicate_keys:
        report.notes.append(f"config.json repeats {sorted(set(cfg.duplicate_keys))}; the last value of each is used")
    report.add(Check("config", not problems, "; ".join(problems) or "consistent", figure=float(len(problems))))

    # How the weights are stored must agree with what the quantization config tells transformers.
    q = cfg.quantization
    stored_ternary = [e.name for e in ckpt.tensors.values() if e.ternary]
    stored_float = [n for n, e in ckpt.tensors.items() if ckpt.is_quantized_linear(n) and not e.ternary]
    if q is None:
        ok = not stored_ternary or not ckpt.format.startswith("hf-")
        detail = (
            "none; weights are latent floats"
            if ok
            else "quantized weights stored, but config.json has no quantization_config"
        )
        report.add(Check("quantization_config", ok, detail, None if ok else stored_ternary[0]))
    elif q.mode is QuantMode.ONLINE and stored_ternary:
        report.add(Check("quantization_config", False, "quantization_mode is online but the weight is stored quantized",
                         stored_ternary[0]))
    elif q.mode is QuantMode.OFFLINE and stored_float and ckpt.format.startswith("hf-"):
        report.add(Check("quantization_config", False, "quantization_mode is offline but the weight is a float master",
                         stored_float[0]))
    else:
        report.add(Check("quantization_config", True, f"{q.linear_class.value}, {q.mode.value}"))


def _tensor_set_checks(ckpt: Checkpoint, report: VerifyReport) -> None:
    expected = ckpt.config.expected_shapes()
    bad = 0
    for name, shape in expected.items():
        entry = ckpt.tensors.get(name)
        if entry is None:
            report.add(Check("tensor_set", False, "missing tensor: the config implies it", name))
            bad += 1
        elif tuple(entry.shape) != shape:
            report.add(Check("tensor_set", False, f"shape {list(entry.shape)}, the config implies {list(shape)}", name))
            bad += 1
    for name in ckpt.tensors:
        if name not in expected:
            report.add(Check("tensor_set", False, "unexpected tensor: the config implies no such weight", name))
            bad += 1
    if not bad:
        report.add(Check("tensor_set", True, f"{len(expected)} tensors, names and shapes as the config implies"))


def _load(entry: TensorEntry, packed: bool = True, hashed: bool = True) -> Loaded:
    """What the checks need of one tensor: its stored bytes where the reader keeps them (packed codes +
    scale, or a dense tensor's floats), or, where no hash is wanted, the counts of its codes read off
    its bytes; else the loaded value (``packed=False``: always the value)."""
    try:
        if packed and not hashed and entry.load_code_counts is not None:
            found = entry.load_code_counts()
            if found is not None:
                return "counts", found
        if packed and entry.load_packed is not None and entry.load_stored_scale is not None:
            raw = entry.load_packed()
            try:
                scale = entry.load_stored_scale()
            except READ_ERRORS:  # load() reports it, after any bad code, as the reader orders them
                return _load(entry, packed=False)
            return "packed", (raw, scale)
        if packed and entry.load_stored is not None and entry.dtype_name in EXPONENT_BITS:
            return "stored", entry.load_stored()
        return "value", entry.load()
    except READ_ERRORS as exc:
        return "error", exc


def _loaded_ahead(ckpt: Checkpoint, hashed: bool) -> Iterator[tuple[str, TensorEntry, Loaded]]:
    """Each tensor loaded, the next one read on a worker thread while the caller checks this one."""
    entries = list(ckpt.tensors.items())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconvert-verify") as pool:
        pending = pool.submit(_load, entries[0][1], True, hashed) if entries else None
        for i, (name, entry) in enumerate(entries):
            loaded = pending.result()
            pending = pool.submit(_load, entries[i + 1][1], True, hashed) if i + 1 < len(entries) else None
            yield name, entry, loaded
            del loaded


def _tensor_checks(ckpt: Checkpoint, report: VerifyReport, progress: Progress, hashed: bool) -> dict[str, dict | None]:
    """Every tensor's checks; returns its digest (None where unreadable, or where not ``hashed``)."""
    digests: dict[str, dict | None] = {}
    total = len(ckpt.tensors)
    for i, (name, entry, (kind, data)) in enumerate(_loaded_ahead(ckpt, hashed)):
        progress(i, total, name)
        if kind in ("packed", "counts"):
            counts, scale = data if kind == "counts" else (packed_code_counts(data[0]), data[1])
            if counts[3] or not scale.is_valid():  # the reader's own message names the first bad field
                kind, data = _load(entry, packed=False)
            else:
                _ternary_checks(name, entry.stored, tuple(entry.shape), counts, scale, report)
                digests[name] = packed_ternary_digest(tuple(entry.shape), *data) if kind == "packed" and hashed else None
                continue
        if kind == "stored":
            digests[name] = _stored_checks(name, entry, data, report, hashed)
            continue
        if kind == "error":
            problem = data.problem if isinstance(data, CheckpointError) else f"{type(data).__name__}: {data}"
            report.add(Check("readable", False, f"{entry.source}: {problem}", name))
            digests[name] = None
            continue
        digests[name] = _value_checks(name, entry, data, report, hashed)
    progress(total, total, "")
    return digests


def _stored_checks(name: str, entry: TensorEntry, raw, report: VerifyReport, hashed: bool) -> dict | None:
    """:func:`_value_checks` of a dense float tensor from its stored bytes: same checks, no torch."""
    shape, dtype = tuple(entry.shape), entry.dtype_name
    bad = non_finite_bits(raw, dtype)
    report.add(Check("readable", True, f"{entry.stored or torch_name(dtype)} {list(shape)}", name))
    detail = f"{bad} of {raw.size // itemsize(dtype)} values are inf or nan" if bad else "all finite"
    report.add(Check("finite", bad == 0, detail, name, float(bad), 0.0))
    return stored_dense_digest(shape, dtype, raw) if hashed else None


def _value_checks(name: str, entry: TensorEntry, value, report: VerifyReport, hashed: bool) -> dict | None:
    from ..ternary import TernaryWeight

    shape = tuple(value.shape)
    if shape != tuple(entry.shape):
        report.add(Check("readable", False, f"loads with shape {list(shape)}, declared {list(entry.shape)}", name))
        return None
    if isinstance(value, TernaryWeight):
        codes = value.codes
        invalid = int(((codes != -1) & (codes != 0) & (codes != 1)).sum())
        counts = (int((codes == -1).sum()), int((codes == 0).sum()), int((codes == 1).sum()), invalid)
        _ternary_checks(name, entry.stored, shape, counts, value.scale, report)
    elif not value.is_floating_point():
        report.add(Check("readable", False, f"dtype {value.dtype} where a float tensor is expected", name))
        return None
    else:
        bad = non_finite_count(value)
        report.add(Check("readable", True, f"{entry.stored or value.dtype} {list(shape)}", name))
        detail = f"{bad} of {value.numel()} values are inf or nan" if bad else "all finite"
        report.add(Check("finite", bad == 0, detail, name, float(bad), 0.0))
    return tensor_digest(value) if hashed else None


def non_finite_count(value: torch.Tensor, chunk: int = 1 << 16) -> int:
    """How many values are inf or nan, from their exponent bits (:func:`~bitconvert.ternary.stored.non_finite_bits`)."""
    import torch

    if not is_float_dtype(value.dtype):
        return int((~torch.isfinite(value)).sum())
    raw = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return non_finite_bits(raw, dtype_name(value.dtype), chunk)


def _ternary_checks(
    name: str, stored: str, shape: tuple[int, ...], counts: tuple[int, int, int, int],
    scale: TernaryScale | StoredScale, report: VerifyReport,
) -> None:  # fmt: skip
    report.add(Check("readable", True, f"{stored or 'ternary'} {list(shape)}", name))
    minus, zero, plus, invalid = counts
    stats = counts_stats(minus, zero, plus, invalid)
    detail = f"-1/0/+1 fractions {stats['minus']:.3f}/{stats['zero']:.3f}/{stats['plus']:.3f}"
    report.add(Check("codes", invalid == 0, detail if not invalid else f"{invalid} values outside {{-1, 0, 1}}",
                     name, float(invalid), 0.0))
    v = scale.item()
    dtype = torch_name(scale.dtype_name) if isinstance(scale, StoredScale) else str(scale.dtype)
    report.add(Check("scale", scale.is_valid(), f"{scale.linear_class.value} {dtype}"
                     + ("" if scale.is_valid() else ": not finite and positive"), name, v))


def _side_file_checks(ckpt: Checkpoint, report: VerifyReport) -> None:
    names = {p.name: p for p in ckpt.side_files}
    if ckpt.format.startswith("hf-"):
        present = [n for n in TOKENIZER_FILES if n in names]
        report.add(Check("side_files", bool(present),
                         f"tokenizer: {', '.join(present)}" if present else "no tokenizer.json or tokenizer.model"))
    for p in ckpt.side_files:
        if p.suffix != ".json":
            continue
        try:
            data = parse_json_text(p.read_bytes(), p.name)
        except OSError as exc:
            report.add(Check("side_files", False, f"{p.name}: cannot read: {exc.strerror or exc}"))
            continue
        except CheckpointError as exc:
            report.add(Check("side_files", False, f"{p.name}: not valid JSON: {exc.problem}"))
            continue
        if p.name == "tokenizer.json":
            report.add(_tokenizer_check(p, ckpt.config.vocab_size))
        elif not isinstance(data, dict):
            report.add(Check("side_files", False, f"{p.name}: not a JSON object"))


def _tokenizer_check(path: Path, vocab_size: int) -> Check:
    try:
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - its own types, and a Rust panic is a BaseException
        message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return Check("side_files", False, f"{path.name}: the tokenizers library cannot load it: {message}")
    ok = n <= vocab_size
    detail = f"tokenizer.json: {n} tokens" + ("" if ok else f", more than vocab_size {vocab_size}")
    return Check("side_files", ok, detail, figure=float(n), threshold=float(vocab_size))
