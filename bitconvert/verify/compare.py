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

import torch

from ..model.checkpoint import Checkpoint, Value
from ..dtypes import dtype_name
from ..errors import CheckpointError
from ..formats import Progress, no_progress, open_checkpoint
from ..ternary import LinearClass, TernaryScale, TernaryWeight, quantize
from .integrity import READ_ERRORS
from .report import Check, Thresholds, VerifyReport

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


#: A fixed token sequence for --logits: deterministic, spread over the vocabulary.
def default_tokens(vocab_size: int, n: int = 16, bos: int | None = None) -> list[int]:
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab_size, (n,), generator=g).tolist()
    if bos is not None and 0 <= bos < vocab_size:
        ids[0] = bos
    return ids


def verify_against(
    src: str | Path,
    ref: str | Path,
    *,
    thresholds: Thresholds = Thresholds(),
    logits: bool = False,
    tokens: Sequence[int] | None = None,
    device: str = "cpu",
    src_format: str | None = None,
    ref_format: str | None = None,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Compare SRC with REF: config, tensor set, codes, scales, dense tensors, optionally logits."""
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
    report.add(Check("open", True, f"src {a.format}, ref {b.format}"))
    _config_check(a, b, report)  # its own check: a config difference never hides the tensors'
    _tensor_checks(a, b, thresholds, report, progress)
    if logits:
        _logits_checks(a, b, thresholds, tokens, device, report)
    _summarize(report)
    return report


def _config_check(a: Checkpoint, b: Checkpoint, report: VerifyReport) -> bool:
    diffs = []
    for f in CONFIG_FIELDS:
        va, vb = getattr(a.config, f), getattr(b.config, f)
        if va != vb and not _same_as_stored(f, va, vb, a, b):
            diffs.append(f"{f}: src {getattr(va, 'value', va)!r}, ref {getattr(vb, 'value', vb)!r}")
    detail = "; ".join(diffs) or "same architecture and dimensions"
    report.add(Check("config", not diffs, detail, figure=float(len(diffs))))
    return not diffs


def _same_as_stored(field: str, va: object, vb: object, a: Checkpoint, b: Checkpoint) -> bool:
    """Whether two config floats agree at the precision a side's format stores that field in
    (``info["config_precision"]``, e.g. float32 in GGUF): 1e-05 equals GGUF's float32 1e-05."""
    stored = {c.info.get("config_precision", {}).get(field) for c in (a, b)} - {None}
    if stored != {"float32"} or not all(isinstance(v, float) for v in (va, vb)):
        return False
    return torch.tensor(va, dtype=torch.float32).item() == torch.tensor(vb, dtype=torch.float32).item()


def _load(ckpt: Checkpoint, name: str, role: str, report: VerifyReport) -> Value | None:
    try:
        return ckpt.tensors[name].load()
    except READ_ERRORS as exc:
        problem = exc.problem if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {exc}"
        report.add(Check("readable", False, f"{role} {ckpt.tensors[name].source}: {problem}", name))
        return None


def _tensor_checks(a: Checkpoint, b: Checkpoint, th: Thresholds, report: VerifyReport, progress: Progress) -> None:
    names = list(a.tensors) + [n for n in b.tensors if n not in a.tensors]
    recorded = {"src": 0, "ref": 0}
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
            recorded[role] += isinstance(value, TernaryWeight) and not entry.ternary
        ternary = a.is_quantized_linear(name) or isinstance(va, TernaryWeight) or isinstance(vb, TernaryWeight)
        if ternary:
            _compare_ternary(name, va, vb, th, report)
        if not isinstance(va, TernaryWeight) and not isinstance(vb, TernaryWeight):
            _compare_dense(name, va, vb, th, report)
        del va, vb
    progress(len(names), len(names), "")
    for role, n in recorded.items():
        if n:
            report.notes.append(
                f"{role}: {n} weights are stored as floats (codes x scale) with their exact scale recorded in "
                "metadata; they are compared as those codes and scales. transformers' online quantization, and "
                "the runtime behind --logits, quantize the floats instead: mean|W| = p x scale, p the fraction "
                "of non-zero codes"
            )


def _ternary_of(value: Value, linear_class: LinearClass) -> TernaryWeight:
    # Online semantics: a latent weight is quantized in fp32, its scale kept in fp32 until re-expressed.
    return value if isinstance(value, TernaryWeight) else quantize(value, linear_class, torch.float32)


def _target(va: Value, vb: Value) -> tuple[LinearClass, torch.dtype]:
    for v in (va, vb):
        if isinstance(v, TernaryWeight):
            return v.scale.linear_class, v.scale.dtype
    return LinearClass.BITLINEAR, torch.float32


def _compare_ternary(name: str, va: Value, vb: Value, th: Thresholds, report: VerifyReport) -> None:
    cls, dtype = _target(va, vb)
    ta, tb = _ternary_of(va, cls), _ternary_of(vb, cls)
    diff = ta.codes != tb.codes
    n = int(diff.sum())
    if n:
        r, c = (int(x) for x in torch.nonzero(diff)[0])
        first = f"row {r}, column {c}: src {int(ta.codes[r, c])}, ref {int(tb.codes[r, c])}"
        detail = f"{n} of {diff.numel()} codes differ (first at {first})"
    else:
        detail = f"all {diff.numel()} codes equal"
    report.add(Check("codes", n <= th.code_mismatches, detail, name, float(n), float(th.code_mismatches)))
    sa, sb = ta.scale.to(cls, dtype), tb.scale.to(cls, dtype)
    rel = _relative(sa, sb)
    how = f"{cls.value} {dtype_name(dtype)}"
    detail = f"src {sa.item():.9g}, ref {sb.item():.9g} ({how}" + (
        ", ref re-expressed)" if not tb.scale.same_as(sb) else ")"
    )
    report.add(Check("scale", rel <= th.scale_rtol, detail, name, rel, th.scale_rtol))


def _relative(sa: TernaryScale, sb: TernaryScale) -> float:
    a, b = sa.item(), sb.item()
    if a == b:
        return 0.0
    return abs(a - b) / abs(b) if b else float("inf")


def _compare_dense(name: str, va: torch.Tensor, vb: torch.Tensor, th: Thresholds, report: VerifyReport) -> None:
    cast = vb.to(va.dtype)
    diff = (va.double() - cast.double()).abs()
    finite_a, finite_b = torch.isfinite(va), torch.isfinite(cast)
    # inf == inf and nan at the same place are "equal" for a bit-exact copy; anything else is inf apart.
    same_special = (~finite_a & ~finite_b) & ((va == cast) | (torch.isnan(va) & torch.isnan(cast)))
    diff = torch.where(same_special, torch.zeros_like(diff), diff)
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    worst = float(diff.max()) if diff.numel() else 0.0
    cast_note = f", ref cast {dtype_name(vb.dtype)} -> {dtype_name(va.dtype)}" if vb.dtype != va.dtype else ""
    detail = f"max abs diff {worst:.6g}{cast_note}"
    report.add(Check("tensor", worst <= th.atol, detail, name, worst, th.atol))


def _logits_checks(
    a: Checkpoint, b: Checkpoint, th: Thresholds, tokens: Sequence[int] | None, device: str, report: VerifyReport
) -> None:
    from ..runtime import compute_logits

    cfg = a.config
    bos = cfg.bos_token_id if isinstance(cfg.bos_token_id, int) else None
    ids = list(tokens) if tokens is not None else default_tokens(cfg.vocab_size, bos=bos)
    # One model resident at a time: logits of SRC, free it, then REF.
    la = compute_logits(a, ids, device=device)
    lb = compute_logits(b, ids, device=device)
    diff = (la.double() - lb.double()).abs()
    worst = float(diff.max()) if torch.isfinite(diff).all() else float("inf")
    pos = int(diff.max(dim=-1).values.argmax())
    report.add(Check("logits", worst <= th.logits_atol,
                     f"max abs diff over {len(ids)} tokens x {la.shape[-1]} vocab (worst at position {pos})",
                     None, worst, th.logits_atol))
    agree = (la.argmax(-1) == lb.argmax(-1)).double().mean().item()
    report.add(Check("argmax", agree >= th.argmax_agreement, f"top token agrees at {agree:.1%} of {len(ids)} positions",
                     None, agree, th.argmax_agreement))
    report.figures["logits_max_abs_diff"] = worst
    report.figures["argmax_agreement"] = agree
    report.figures["tokens"] = ids


def _summarize(report: VerifyReport) -> None:
    def worst(name: str) -> float | None:
        figs = [c.figure for c in report.checks if c.name == name and c.figure is not None]
        return max(figs) if figs else None

    report.figures.update(
        code_mismatches=int(sum(c.figure or 0 for c in report.checks if c.name == "codes")),
        scale_max_rel_diff=worst("scale"),
        tensor_max_abs_diff=worst("tensor"),
        failed=len(report.failures),
    )
