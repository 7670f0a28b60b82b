"""``verify SRC --roundtrip FORMAT``: SRC -> FORMAT -> SRC's format in a temporary directory.

Both legs are written with SRC's own choices (dense dtype, scale dtype, scale convention), so a
lossless format brings every code, scale bit and dense value back; the report holds the checks of
the intermediate against SRC (``there.*``) and of the result against SRC (``back.*``), with the
strict thresholds of :class:`~bitconvert.verify.report.Thresholds`.

A master's latent float weights cannot pass through a ternary format; for those the comparison is
of the ternary model they quantize to (codes and scale), as everywhere in ``verify``.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from ..convert import convert
from ..errors import BitconvertError, CheckpointError
from ..formats import Progress, no_progress, open_checkpoint, options_class, writes_directory
from ..formats.options import fields_of
from ..model.checkpoint import Checkpoint, Kind
from .compare import verify_against
from .report import Check, Thresholds, VerifyReport


def options_like(ckpt: Checkpoint, fmt: str) -> dict[str, Any]:
    """The options of writer ``fmt`` that reproduce ``ckpt``'s own storage choices."""
    dense = Counter(e.dtype_name for e in ckpt.tensors.values() if e.kind is not Kind.TERNARY)
    scales = Counter(e.dtype_name for e in ckpt.tensors.values() if e.kind is Kind.TERNARY)
    wanted = {
        "linear_class": ckpt.source_linear_class(),
        "dtype": dense.most_common(1)[0][0] if dense else "BF16",
        "scale_dtype": scales.most_common(1)[0][0] if scales else "BF16",
    }
    taken = fields_of(options_class(fmt))
    return {k: v for k, v in wanted.items() if k in taken}


def _target_path(tmp: Path, stem: str, fmt: str) -> Path:
    if writes_directory(fmt):
        return tmp / stem
    return tmp / (f"{stem}.gguf" if "gguf" in fmt else f"{stem}.{fmt}")


def verify_roundtrip(
    src: str | Path,
    fmt: str,
    *,
    thresholds: Thresholds = Thresholds(),
    options: Mapping[str, Any] | None = None,
    logits: bool = False,
    embeddings: bool = False,
    progress: Progress = no_progress,
) -> VerifyReport:
    """Convert ``src`` to ``fmt`` and back, and compare both results with ``src``."""
    src = Path(src)
    report = VerifyReport(str(src), mode="roundtrip", against=fmt)
    writes_directory(fmt)  # an unknown format is a usage error before any work (no writer imported)
    try:
        ckpt = open_checkpoint(src)
    except CheckpointError as exc:
        report.add(Check("open", False, f"{exc.path}: {exc.problem}", exc.tensor))
        return report
    if any(e.kind is not Kind.TERNARY for n, e in ckpt.tensors.items() if ckpt.is_quantized_linear(n)):
        report.notes.append("SRC holds latent float weights: they are compared through their absmean quantization")
    with tempfile.TemporaryDirectory(prefix="bitconvert-roundtrip-") as tmp:
        mid = _target_path(Path(tmp), "there", fmt)
        back = _target_path(Path(tmp), "back", ckpt.format)
        legs = {
            "convert": (src, mid, fmt, options or options_like(ckpt, fmt)),
            "convert_back": (mid, back, ckpt.format, options_like(ckpt, ckpt.format)),
        }
        for leg, (a, b, to, opts) in legs.items():
            try:
                convert(a, b, to, opts)
            except CheckpointError as exc:
                report.add(Check(leg, False, f"{exc.path}: {exc.problem}", exc.tensor))
                return report
            except BitconvertError as exc:  # e.g. the format needs an option to accept this source
                report.add(Check(leg, False, str(exc)))
                return report
            report.add(Check(leg, True, f"{Path(a).name} -> {to}"))
        report.extend(verify_against(mid, src, thresholds=thresholds, logits=logits, embeddings=embeddings,
                                      progress=progress), "there.")
        report.extend(verify_against(back, src, thresholds=thresholds, logits=logits, embeddings=embeddings,
                                      progress=progress), "back.")
    report.figures["failed"] = len(report.failures)
    return report
