"""``verify SRC --against REF``: two checkpoints, any formats, compared tensor by tensor.

Values are compared as SRC stores them, because SRC is what is under test and its format's
precision is a declared choice: REF's dense tensors are cast to SRC's dtype, REF's scales are
re-expressed in SRC's convention and dtype, and only then compared. A conversion that wrote
exactly what it should (e.g. ``pack`` of a master, bf16 rounding included) therefore passes with
the strict default thresholds of zero, and any changed code, scale bit or value fails.

A latent float weight (a master) is quantized with absmean, as transformers does online, never
"recovered": the codes and scale compared are the ones a BitNet forward pass would use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..dtypes import Dense
from ..errors import CheckpointError, UsageError
from ..formats import Progress, no_progress, open_checkpoint
from ..model.checkpoint import Checkpoint, Value, load_recorded
from ..model.families import EMBEDDING_TASK
from ..ternary.linear_class import LinearClass
from ..ternary.quantize import quantize
from ..ternary.scale import Scale
from ..ternary.weight import TernaryWeight
from .as_stored import as_stored_by, default_tokens, dense_as_stored_by
from .report import Check, Thresholds, VerifyReport
from .values import READ_ERRORS, first_difference, max_abs_diff, read_problem, recorded

CONFIG_FIELDS = (
    "architecture",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "hidden_act",
)


def verify_against(
    src: str | Path,
    ref: str | Path,
    *,
    thresholds: Thresholds = Thresholds(),
    logits: bool = False,
    tokens: Sequence[int] | None = None,
    device: str = "cpu",
    embeddings: bool = False,
    src_format: str | None = None,
    ref_format: str | None = None,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Compare SRC with REF: config, tensor set, codes, scales, dense tensors, optionally logits (causal
    LMs) or sentence embeddings (embedding models; a UsageError names the one that fits)."""
    report = VerifyReport(str(src), mode="against", against=str(ref))
    opened = []
    for role, path, fmt in (("src", src, src_format), ("ref", ref, ref_format)):
        try:
            opened.append(open_checkpoint(path, fmt))
        except CheckpointError as exc:
            report.add(Check("open", False, f"{role} {exc.path}: {exc.problem}", exc.tensor))
    if len(opened) < 2:
        return report
    a, b = opened
    _refuse_other_task(a, logits, embeddings)
    report.add(Check("open", True, f"src {a.format}, ref {b.format}"))
    _config_check(a, b, report)  # its own check: a config difference never hides the tensors'
    _tensor_checks(a, b, thresholds, report, progress)
    if logits:
        _logits_checks(a, b, thresholds, tokens, device, report)
    if embeddings:
        from .embeddings import embedding_checks

        embedding_checks(a, b, report, device, thresholds.min_cosine)
    _summarize(report)
    return report


def _refuse_other_task(ckpt: Checkpoint, logits: bool, embeddings: bool) -> None:
    """--logits on an embedding model, --embeddings on a causal LM: a usage error naming the other."""
    task = ckpt.config.family.task
    if logits and task == EMBEDDING_TASK:
        raise UsageError(f"{ckpt.path} is an embedding model ({ckpt.config.family.title}): compare with --embeddings")
    if embeddings and task != EMBEDDING_TASK:
        raise UsageError(f"{ckpt.path} is not an embedding model ({ckpt.config.family.title}): compare with --logits")


def _config_value(ckpt: Checkpoint, field: str) -> object:
    # the family is compared by its key, as `inspect` names it
    return ckpt.config.family.key if field == "architecture" else getattr(ckpt.config, field)


def _config_check(a: Checkpoint, b: Checkpoint, report: VerifyReport) -> bool:
    diffs = []
    for f in CONFIG_FIELDS:
        va, vb = _config_value(a, f), _config_value(b, f)
        if va != vb and not _same_as_stored(f, va, vb, a, b):
            diffs.append(f"{f}: src {va!r}, ref {vb!r}")
    detail = "; ".join(diffs) or "same architecture and dimensions"
    report.add(Check("config", not diffs, detail, figure=float(len(diffs))))
    return not diffs


def _same_as_stored(field: str, va: object, vb: object, a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two config floats agree at the precision a side's format stores that field in
    (``facts.config_precision``, e.g. float32 in GGUF): 1e-05 equals GGUF's float32 1e-05."""
    stored = {c.facts.config_precision.get(field) for c in (a, b)} - {None}
    if stored != {"float32"} or not all(isinstance(v, float) for v in (va, vb)):
        return False
    with np.errstate(over="ignore"):
        return bool(np.float32(va) == np.float32(vb))


def _load(ckpt: Checkpoint, name: str, role: str, report: VerifyReport) -> Value | None:
    try:
        return load_recorded(ckpt.tensors[name])
    except READ_ERRORS as exc:
        report.add(Check("readable", False, f"{role} {ckpt.tensors[name].source}: {read_problem(exc)}", name))
        return None


def _tensor_checks(a: Checkpoint, b: Checkpoint, th: Thresholds, report: VerifyReport, progress: Progress) -> None:
    names = list(a.tensors) + [n for n in b.tensors if n not in a.tensors]
    counted = {"src": 0, "ref": 0}
    for i, name in enumerate(names):
        progress(i, len(names), name)
        if name not in a.tensors:
            report.add(Check("tensor_set", False, "in REF but missing from SRC", name))
            continue
        if name not in b.tensors:
            report.add(Check("tensor_set", False, "in SRC but not in REF", name))
            continue
        ea, eb = a.tensors[name], b.tensors[name]
        if tuple(ea.shape) != tuple(eb.shape):
            report.add(Check("shape", False, f"src {list(ea.shape)}, ref {list(eb.shape)}", name))
            continue
        va, vb = _load(a, name, "src", report), _load(b, name, "ref", report)
        if va is None or vb is None:
            continue
        for role, entry, value in (("src", ea, va), ("ref", eb, vb)):
            counted[role] += recorded(entry, value)
        ternary = a.is_quantized_linear(name) or isinstance(va, TernaryWeight) or isinstance(vb, TernaryWeight)
        if ternary:
            _compare_ternary(name, va, vb, th, report)
        if not isinstance(va, TernaryWeight) and not isinstance(vb, TernaryWeight):
            _compare_dense(name, va, vb, th, report)
        del va, vb
    progress(len(names), len(names), "")
    for role, n in counted.items():
        if n:
            report.notes.append(
                f"{role}: {n} weights are stored as floats (codes x scale) with their exact scale recorded in "
                "metadata; they are compared as those codes and scales. transformers' online quantization, and "
                "the runtime behind --logits, quantize the floats instead: mean|W| = p x scale, p the fraction "
                "of non-zero codes"
            )


def _ternary_of(value: Value, linear_class: LinearClass) -> TernaryWeight:
    # Online semantics: a latent weight is quantized in fp32, its scale kept in fp32 until re-expressed.
    return value if isinstance(value, TernaryWeight) else quantize(value, linear_class, "F32")


def _target(va: Value, vb: Value) -> tuple[LinearClass, str]:
    for v in (va, vb):
        if isinstance(v, TernaryWeight):
            return v.scale.linear_class, v.scale.dtype_name
    return LinearClass.BITLINEAR, "F32"


def _compare_ternary(name: str, va: Value, vb: Value, th: Thresholds, report: VerifyReport) -> None:
    cls, dtype = _target(va, vb)
    ta, tb = _ternary_of(va, cls), _ternary_of(vb, cls)
    n, first = first_difference(ta.codes, tb.codes)
    if n:
        r, c = first
        where = f"row {r}, column {c}: src {int(ta.codes[r, c])}, ref {int(tb.codes[r, c])}"
        detail = f"{n} of {ta.codes.size} codes differ (first at {where})"
    else:
        detail = f"all {ta.codes.size} codes equal"
    report.add(Check("codes", n <= th.code_mismatches, detail, name, float(n), float(th.code_mismatches)))
    sa, sb = ta.scale.to(cls, dtype), tb.scale.to(cls, dtype)
    rel = _relative(sa, sb)
    detail = f"src {sa.item():.9g}, ref {sb.item():.9g} ({cls.value} {dtype}" + (
        ", ref re-expressed)" if tb.scale != sb else ")"
    )
    report.add(Check("scale", rel <= th.scale_rtol, detail, name, rel, th.scale_rtol))


def _relative(sa: Scale, sb: Scale) -> float:
    a, b = sa.item(), sb.item()
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b else float("inf")


def _compare_dense(name: str, va: Dense, vb: Dense, th: Thresholds, report: VerifyReport) -> None:
    worst = max_abs_diff(va, vb.to(va.dtype_name))
    cast_note = f", ref cast {vb.dtype_name} -> {va.dtype_name}" if vb.dtype_name != va.dtype_name else ""
    detail = f"max abs diff {worst:.6g}{cast_note}"
    report.add(Check("tensor", worst <= th.atol, detail, name, worst, th.atol))


def _logits_checks(
    a: Checkpoint, b: Checkpoint, th: Thresholds, tokens: Sequence[int] | None, device: str, report: VerifyReport
) -> None:
    """The reference runtime's logits of both models: the one check that computes with torch.

    Where REF is a master (latent floats) and SRC stores ternary weights, the master is run as SRC
    stores it: quantized, its scales rounded to SRC's dtype and convention (a bf16 ``weight_scale``
    is what 2B-4T ships), and its dense tensors in SRC's float types. The figure then measures the conversion, not the precision the format was
    chosen for; a changed code or scale still shows. SRC, under test, always runs as it is."""
    import torch

    from ..runtime import compute_logits

    a_run, b_run, basis = a, as_stored_by(b, a), ""
    if b_run is not b:
        basis = f"; REF's master weights run as SRC stores them ({_stored_scale_kinds(a)})"
    # dense tensors too: SRC written with another --dtype holds REF's values at its own precision, which the
    # tensor checks measure; the logits then measure the conversion, as for the scales
    b_run, casts = dense_as_stored_by(b_run, a)
    if casts:
        basis += f"; REF's dense tensors cast as SRC stores them ({', '.join(casts)})"
    cfg = a.config
    bos = cfg.bos_token_id if isinstance(cfg.bos_token_id, int) else None
    ids = list(tokens) if tokens is not None else default_tokens(cfg.vocab_size, bos=bos)
    # One model resident at a time: logits of SRC, free it, then REF.
    la = compute_logits(a_run, ids, device=device)
    lb = compute_logits(b_run, ids, device=device)
    diff = (la.double() - lb.double()).abs()
    worst = float(diff.max()) if torch.isfinite(diff).all() else float("inf")
    pos = int(diff.max(dim=-1).values.argmax())
    passed = worst <= th.logits_atol
    hint = (
        ""
        if passed
        else (
            f"; the limit is --logits-atol {th.logits_atol:g}: codes or scales differ (see the tensor checks), "
            "or the runtimes' activation arithmetic does at this precision"
        )
    )
    report.add(
        Check(
            "logits",
            passed,
            f"max abs diff over {len(ids)} tokens x {la.shape[-1]} vocab (worst at position {pos}){basis}{hint}",
            None,
            worst,
            th.logits_atol,
        )
    )
    agree = (la.argmax(-1) == lb.argmax(-1)).double().mean().item()
    report.add(
        Check(
            "argmax",
            agree >= th.argmax_agreement,
            f"top token agrees at {agree:.1%} of {len(ids)} positions",
            None,
            agree,
            th.argmax_agreement,
        )
    )
    report.figures["logits_max_abs_diff"] = worst
    report.figures["argmax_agreement"] = agree
    report.figures["tokens"] = ids


def _stored_scale_kinds(ckpt: Checkpoint) -> str:
    from ..model.checkpoint import Kind

    kinds = set()
    for entry in ckpt.tensors.values():
        if entry.kind is Kind.TERNARY:
            scale = entry.stored().scale or entry.load().scale
            kinds.add(f"{scale.dtype_name} {scale.linear_class.value} scales")
    return ", ".join(sorted(kinds)) or "as stored"


def _summarize(report: VerifyReport) -> None:
    worst: dict[str, float] = {}
    mismatches = failed = 0
    for c in report.checks:  # one pass, whatever the number of checks
        failed += not c.passed
        if c.name == "codes":
            mismatches += c.figure or 0
        if c.name in ("scale", "tensor") and c.figure is not None:
            worst[c.name] = c.figure if c.name not in worst else max(worst[c.name], c.figure)
    report.figures.update(
        code_mismatches=int(mismatches),
        scale_max_rel_diff=worst.get("scale"),
        tensor_max_abs_diff=worst.get("tensor"),
        failed=failed,
    )
