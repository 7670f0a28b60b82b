"""``verify SRC``: is the checkpoint whole and self-consistent? Reads every tensor once, in turn.

Each tensor is checked on what its reader says it is (``entry.kind``), off its stored bytes where
they tell enough (``entry.stored()``: code counts and the scale of ternary weights, the float words
of dense ones), else on its loaded value. Where the bytes cannot vouch for a tensor (a code 3, a
scale that is not finite and positive, blocks with different scales) the value is loaded, so the
reader names the problem in its own words. Both ways give the same checks; numpy only, no torch.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Literal

from ..dtypes import EXPONENT_BITS, Dense, itemsize, non_finite_count, torch_name
from ..errors import CheckpointError
from ..formats import Progress, no_progress, open_checkpoint
from ..formats.hf.packed import NAME as PACKED_LAYOUT
from ..io.jsonfile import parse_json_text
from ..model.checkpoint import (
    ROW_BLOCK_VALUES,
    Checkpoint,
    Kind,
    TensorEntry,
    dense_rows,
    dense_rows_known,
    load_recorded,
    row_blocks,
)
from ..model.config import QuantMode
from ..model.sentence_transformers import MODULES_FILE, read_embedding_setup
from ..ternary.scale import Scale
from ..ternary.stats import CodeCounts, code_counts, counts_stats
from ..ternary.weight import TernaryWeight
from .manifest import check_manifest, new_manifest, packed_ternary_digest, read_manifest, tensor_digest
from .report import Check, VerifyReport
from .values import READ_ERRORS, read_problem

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
#: what is known of one tensor before its checks: code counts off its bytes, float words, a value, an error
Read = tuple[Literal["counts", "floats", "value", "error"], Any]


def verify_integrity(
    src: str | Path | Checkpoint,
    *,
    manifest_check: str | Path | dict[str, Any] | None = None,
    format: str | None = None,
    progress: Progress = no_progress,
    digests: bool = True,
) -> VerifyReport:
    """Integrity checks of one checkpoint in any format the project reads (a path, or one already opened).

    Checks: the checkpoint opens; config consistency; the tensor set and shapes the config implies;
    every tensor readable with the right dtype; ternary codes in {-1, 0, 1} and scales finite and
    positive; dense tensors finite; side files (tokenizer) present and parseable. The report's
    ``manifest`` holds a sha256 per tensor; ``manifest_check`` (a path or a loaded manifest) adds
    one check per tensor against it. ``digests=False`` skips the hashing (a quarter of the time
    of a packed model's checks) where no manifest is wanted: ``report.manifest`` is then None.
    Raises only ``UsageError`` (SRC does not exist, bad format name) or ``CheckpointError`` for an
    unreadable ``manifest_check`` file; every problem of the checkpoint itself is a failed check.
    """
    report = VerifyReport(str(src.path if isinstance(src, Checkpoint) else src), mode="integrity")
    expected_manifest = None
    if manifest_check is not None:
        expected_manifest = manifest_check if isinstance(manifest_check, dict) else read_manifest(manifest_check)
    if isinstance(src, Checkpoint):
        ckpt = src
    else:
        try:
            ckpt = open_checkpoint(src, format)
        except CheckpointError as exc:
            report.add(open_failure(exc))
            return report
    cfg = ckpt.config
    report.add(Check("open", True, f"{ckpt.format}, architecture {cfg.family.key}, {len(ckpt.tensors)} tensors"))
    report.notes += ckpt.notes
    _config_checks(ckpt, report)
    _tensor_set_checks(ckpt, report)
    found = _tensor_checks(ckpt, report, progress, digests or expected_manifest is not None)
    _side_file_checks(ckpt, report)
    if digests:
        report.manifest = new_manifest(ckpt.format, {k: v for k, v in found.items() if v is not None})
    if expected_manifest is not None:
        report.checks += check_manifest(expected_manifest, found)
    report.figures.update(
        tensors=len(ckpt.tensors),
        ternary_tensors=sum(1 for n in ckpt.tensors if ckpt.is_quantized_linear(n)),
        failed=len(report.failures),
    )
    return report


def open_failure(exc: CheckpointError) -> Check:
    """The failed ``open`` check of a checkpoint that does not open."""
    return Check("open", False, f"{exc.path}: {exc.problem}", exc.tensor)


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
    stored_ternary = [e.name for e in ckpt.tensors.values() if e.kind is Kind.TERNARY]
    stored_float = [n for n, e in ckpt.tensors.items() if ckpt.is_quantized_linear(n) and e.kind is not Kind.TERNARY]
    hf = ckpt.format.startswith("hf-")
    if q is None:
        ok = not stored_ternary or not hf
        detail = "none; weights are latent floats" if ok else "quantized weights stored, but config.json has no quantization_config"
        report.add(Check("quantization_config", ok, detail, None if ok else stored_ternary[0]))
    elif q.mode is QuantMode.ONLINE and stored_ternary:
        report.add(Check("quantization_config", False, "quantization_mode is online but the weight is stored quantized",
                         stored_ternary[0]))
    elif q.mode is QuantMode.OFFLINE and stored_float and hf:
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


# --- reading each tensor ------------------------------------------------------------------------


def _read(entry: TensorEntry, hashed: bool) -> Read:
    """What the checks need of one tensor: off its bytes where they vouch for it, else its value."""
    try:
        found = _off_the_bytes(entry, hashed)
        return found if found is not None else ("value", load_recorded(entry))
    except READ_ERRORS as exc:
        return "error", exc


def _off_the_bytes(entry: TensorEntry, hashed: bool) -> Read | None:
    """("counts", (counts, stored)) for ternary codes counted off their bytes, ("floats", stored) for
    float words checked as they are, None where only the value tells (then it is loaded)."""
    if hashed and entry.kind is not Kind.TERNARY:
        return None  # a digest hashes the values load() gives (a reader may reorder rows, e.g. GGUF q/k)
    if _by_rows(entry):
        return "rows", None  # checked block by block of rows (an embedding): memory is one block
    try:
        stored = entry.stored()
    except READ_ERRORS:
        return None  # load() reports it, in the reader's words
    if stored.counts is not None and entry.kind is not Kind.DENSE:
        # a digest needs the codes in order: off the bytes only where the layout gives them so
        if stored.scale is None or (hashed and stored.layout != PACKED_LAYOUT):
            return None
        counts = stored.counts()
        if counts is None or counts[3] or not stored.scale.is_valid(all_zero=not (counts[0] or counts[2])):
            return None  # the value says what the bytes cannot (different block scales) or what is wrong
        return "counts", (counts, stored)
    if entry.kind is Kind.TERNARY or (entry.kind is Kind.LATENT and entry.record is not None):
        return None  # codes the bytes cannot count: decoded by load()
    if stored.layout != "floats" or (stored.dtype_name or entry.dtype_name) not in EXPONENT_BITS:
        return None  # quantized or converted on loading (GGUF Q8_0 embeddings)
    return "floats", stored


def _by_rows(entry: TensorEntry) -> bool:
    """A large float tensor whose reader streams its rows (see TensorEntry.rows)."""
    if entry.kind is Kind.TERNARY or (entry.kind is Kind.LATENT and entry.record is not None):
        return False
    return dense_rows_known(entry) and math.prod(entry.shape) > ROW_BLOCK_VALUES and len(entry.shape) > 1


def _rows_checks(name: str, entry: TensorEntry, report: VerifyReport) -> None:
    """``readable`` and ``finite`` of a large float tensor, counted block by block of rows."""
    bad, dtype_name = 0, entry.dtype_name
    try:
        for start, stop in row_blocks(entry.shape, ROW_BLOCK_VALUES):
            block = dense_rows(entry, start, stop)
            bad += non_finite_count(block.raw(), block.dtype_name)
            dtype_name = block.dtype_name
    except READ_ERRORS as exc:
        report.add(Check("readable", False, f"{entry.source}: {read_problem(exc)}", name))
        return
    _float_verdicts(name, entry, bad, math.prod(entry.shape), dtype_name, report)


def _read_ahead(ckpt: Checkpoint, hashed: bool) -> Iterator[tuple[str, TensorEntry, Read]]:
    """Each tensor read, the next one read on a worker thread while the caller checks this one."""
    entries = list(ckpt.tensors.items())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitconvert-verify") as pool:
        pending = pool.submit(_read, entries[0][1], hashed) if entries else None
        for i, (name, entry) in enumerate(entries):
            found = pending.result()
            pending = pool.submit(_read, entries[i + 1][1], hashed) if i + 1 < len(entries) else None
            yield name, entry, found
            del found


def _tensor_checks(ckpt: Checkpoint, report: VerifyReport, progress: Progress, hashed: bool) -> dict[str, dict | None]:
    """Every tensor's checks; returns its digest (None where unreadable, or where not ``hashed``)."""
    digests: dict[str, dict | None] = {}
    total = len(ckpt.tensors)
    for i, (name, entry, (how, data)) in enumerate(_read_ahead(ckpt, hashed)):
        progress(i, total, name)
        if how == "counts":
            counts, stored = data
            _ternary_checks(name, entry, counts, stored.scale, report)
            digests[name] = packed_ternary_digest(entry.shape, stored.data, stored.scale) if hashed else None
        elif how == "floats":
            _float_checks(name, entry, data.data, data.dtype_name or entry.dtype_name, report)
            digests[name] = None
        elif how == "rows":
            _rows_checks(name, entry, report)
            digests[name] = None
        elif how == "error":
            report.add(Check("readable", False, f"{entry.source}: {read_problem(data)}", name))
            digests[name] = None
        else:
            digests[name] = _value_checks(name, entry, data, report, hashed)
    progress(total, total, "")
    return digests


def _value_checks(name: str, entry: TensorEntry, value, report: VerifyReport, hashed: bool) -> dict | None:
    """The checks of one loaded value (a ternary weight or floats); its digest where ``hashed``."""
    shape = tuple(value.shape)
    if shape != tuple(entry.shape):
        report.add(Check("readable", False, f"loads with shape {list(shape)}, declared {list(entry.shape)}", name))
        return None
    if isinstance(value, TernaryWeight):
        _ternary_checks(name, entry, code_counts(value.codes), value.scale, report)
    elif not isinstance(value, Dense) or not value.is_float:
        what = torch_name(value.dtype_name) if isinstance(value, Dense) else type(value).__name__
        report.add(Check("readable", False, f"dtype {what} where a float tensor is expected", name))
        return None
    else:
        _float_checks(name, entry, value.raw(), value.dtype_name, report)
    return tensor_digest(value) if hashed else None


def _float_checks(name: str, entry: TensorEntry, raw, dtype_name: str, report: VerifyReport) -> None:
    """``readable`` and ``finite`` of float values, from their words (inf and nan: all exponent bits set)."""
    _float_verdicts(name, entry, non_finite_count(raw, dtype_name), raw.size // itemsize(dtype_name), dtype_name, report)


def _float_verdicts(name: str, entry: TensorEntry, bad: int, values: int, dtype_name: str, report: VerifyReport) -> None:
    report.add(Check("readable", True, f"{entry.label or torch_name(dtype_name)} {list(entry.shape)}", name))
    detail = f"{bad} of {values} values are inf or nan" if bad else "all finite"
    report.add(Check("finite", bad == 0, detail, name, float(bad), 0.0))


def _ternary_checks(name: str, entry: TensorEntry, counts: CodeCounts, scale: Scale, report: VerifyReport) -> None:
    report.add(Check("readable", True, f"{entry.label or 'ternary'} {list(entry.shape)}", name))
    minus, zero, plus, invalid = counts
    stats = counts_stats(minus, zero, plus, invalid)
    detail = f"-1/0/+1 fractions {stats['minus']:.3f}/{stats['zero']:.3f}/{stats['plus']:.3f}"
    report.add(Check("codes", invalid == 0, detail if not invalid else f"{invalid} values outside {{-1, 0, 1}}",
                     name, float(invalid), 0.0))
    valid = scale.is_valid(all_zero=not (minus or plus))
    report.add(Check("scale", valid, f"{scale.linear_class.value} {torch_name(scale.dtype_name)}"
                     + ("" if valid else ": not finite and positive"), name, scale.item()))


# --- side files ---------------------------------------------------------------------------------


def _side_file_checks(ckpt: Checkpoint, report: VerifyReport) -> None:
    names = ckpt.side_file_names()
    if ckpt.format.startswith("hf-"):
        present = [n for n in TOKENIZER_FILES if n in names]
        report.add(Check("side_files", bool(present),
                         f"tokenizer: {', '.join(present)}" if present else "no tokenizer.json or tokenizer.model"))
    for name, p in names.items():
        if p.suffix != ".json":
            continue
        try:
            data = parse_json_text(p.read_bytes(), name)
        except OSError as exc:
            report.add(Check("side_files", False, f"{name}: cannot read: {exc.strerror or exc}"))
            continue
        except CheckpointError as exc:
            report.add(Check("side_files", False, f"{name}: not valid JSON: {exc.problem}"))
            continue
        if name == "tokenizer.json":
            report.add(_tokenizer_check(p, ckpt.config.vocab_size))
        elif not isinstance(data, dict) and name != MODULES_FILE:  # modules.json is a list of modules
            report.add(Check("side_files", False, f"{name}: not a JSON object"))
    if MODULES_FILE in names:
        report.add(_sentence_transformers_check(names))


def _sentence_transformers_check(names: dict[str, Path]) -> Check:
    """The sentence-transformers setup the side files describe, read as the GGUF writer and runtime read it."""
    try:
        setup = read_embedding_setup(names)
    except CheckpointError as exc:
        return Check("side_files", False, f"sentence-transformers setup: {exc}")
    assert setup is not None
    modes = "+".join(setup.pooling.modes) if setup.pooling and setup.pooling.modes else "none"
    normalize = ", L2 normalised" if setup.normalize else ""
    return Check("side_files", True, f"sentence-transformers: pooling {modes}{normalize}")


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


__all__ = ["READ_ERRORS", "open_failure", "verify_integrity"]
