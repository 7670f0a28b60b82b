"""``verify SRC``: is the checkpoint whole and self-consistent? Reads every tensor once, in turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import Checkpoint
from ..config import QuantMode
from ..errors import CheckpointError
from ..formats import Progress, no_progress, open_checkpoint
from ..jsonfile import parse_json_text
from ..ternary import TernaryWeight, ternary_stats
from .manifest import check_manifest, new_manifest, read_manifest, tensor_digest
from .report import Check, VerifyReport

#: load failures that mean "this tensor is unreadable" rather than a bug in bitconvert
READ_ERRORS = (CheckpointError, OSError, ValueError, RuntimeError)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def verify_integrity(
    src: str | Path,
    *,
    manifest_check: str | Path | dict[str, Any] | None = None,
    format: str | None = None,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Integrity checks of one checkpoint in any format the project reads.

    Checks: the checkpoint opens; config consistency; the tensor set and shapes the config implies;
    every tensor readable with the right dtype; ternary codes in {-1, 0, 1} and scales finite and
    positive; dense tensors finite; side files (tokenizer) present and parseable. The report's
    ``manifest`` holds a sha256 per tensor; ``manifest_check`` (a path or a loaded manifest) adds
    one check per tensor against it. Raises only ``UsageError`` (SRC does not exist, bad format
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
    digests = _tensor_checks(ckpt, report, progress)
    _side_file_checks(ckpt, report)
    report.manifest = new_manifest(ckpt.format, {k: v for k, v in digests.items() if v is not None})
    if expected_manifest is not None:
        for c in check_manifest(expected_manifest, digests):
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


def _tensor_checks(ckpt: Checkpoint, report: VerifyReport, progress: Progress) -> dict[str, dict | None]:
    digests: dict[str, dict | None] = {}
    total = len(ckpt.tensors)
    for i, (name, entry) in enumerate(ckpt.tensors.items()):
        progress(i, total, name)
        try:
            value = entry.load()
        except READ_ERRORS as exc:
            problem = exc.problem if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
            report.add(Check("readable", False, f"{entry.source}: {problem}", name))
            digests[name] = None
            continue
        shape = tuple(value.shape)
        if shape != tuple(entry.shape):
            report.add(Check("readable", False, f"loads with shape {list(shape)}, declared {list(entry.shape)}", name))
            digests[name] = None
            continue
        if isinstance(value, TernaryWeight):
            _ternary_checks(name, entry.stored, value, report)
        elif not value.is_floating_point():
            report.add(Check("readable", False, f"dtype {value.dtype} where a float tensor is expected", name))
            digests[name] = None
            continue
        else:
            bad = int((~torch.isfinite(value)).sum())
            report.add(Check("readable", True, f"{entry.stored or value.dtype} {list(shape)}", name))
            detail = f"{bad} of {value.numel()} values are inf or nan" if bad else "all finite"
            report.add(Check("finite", bad == 0, detail, name, float(bad), 0.0))
        digests[name] = tensor_digest(value)
        del value
    progress(total, total, "")
    return digests


def _ternary_checks(name: str, stored: str, value: TernaryWeight, report: VerifyReport) -> None:
    report.add(Check("readable", True, f"{stored or 'ternary'} {list(value.shape)}", name))
    codes = value.codes
    invalid = int(((codes != -1) & (codes != 0) & (codes != 1)).sum())
    stats = ternary_stats(codes)
    detail = f"-1/0/+1 fractions {stats['minus']:.3f}/{stats['zero']:.3f}/{stats['plus']:.3f}"
    report.add(Check("codes", invalid == 0, detail if not invalid else f"{invalid} values outside {{-1, 0, 1}}",
                     name, float(invalid), 0.0))
    scale = value.scale
    v = scale.item()
    report.add(Check("scale", scale.is_valid(), f"{scale.linear_class.value} {scale.dtype}"
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
